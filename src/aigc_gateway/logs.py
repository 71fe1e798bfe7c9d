"""Logging set-up for the CLI, with secrets redacted.

Only the CLI configures handlers (the library code just logs). The filter removes API tokens,
bearer credentials, the gateway's cookies and one-time tokens in URLs from every record, whatever
logger produced it (uvicorn's access log prints query strings, for instance).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"(agw_)[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[^\s'\",]+"),
    re.compile(r"((?:aigc_session|aigc_instance|aigc_oidc)=)[^;\s'\",&]+"),
    re.compile(r"([?&](?:token|code|state|id_token_hint|password)=)[^&\s'\"]+"),
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with secrets replaced by ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
