"""HTTP/1.1 heads for the connection-level proxy (pure: bytes in, bytes out).

The rules are the ones the ASGI relay follows (``relay.py``): hop-by-hop headers dropped, the
gateway's own cookies and API tokens never reach the engine, the engine cannot set the gateway's
cookies, and the ``X-Forwarded-*`` headers are the gateway's own.

Two rules keep a relayed request one request to the engine: a ``Connection`` option never
removes a header that frames the message (``FRAMING``), and the connection-level proxy writes the
body's framing itself (``upstream_request``). A header whose name only looks like one the gateway
sets or strips (``X_Aigc_User``, ``x_forwarded_for``: many servers read ``_`` as ``-``) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from aigc_gateway.auth.core.credentials import carries_gateway_token

GATEWAY_COOKIES = frozenset({b"aigc_session", b"aigc_instance", b"aigc_oidc"})
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
SET_BY_GATEWAY = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"forwarded",
    }
)
WS_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
"""Headers that frame a message or name its target: a ``Connection`` option never removes them
(a length the engine does not see makes it read the body as a second request)."""
GUARDED = SET_BY_GATEWAY | HOP_BY_HOP | WS_HANDSHAKE | FRAMING | {b"cookie", b"authorization"}
"""Names the gateway sets, strips or frames with: a look-alike of one (``_`` for ``-``) is dropped."""
HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {b"content-length"}
MAX_HEAD_BYTES = 64 * 1024
"""A request head larger than this is left to the ASGI server (which refuses it)."""

STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RequestHead:
    """One parsed request head (names lower-cased, values as sent)."""

    method: bytes = b""
    target: bytes = b""
    version: str = "1.1"
    headers: Headers = field(default_factory=list)
    keep_alive: bool = True
    upgrade: bool = False
    """The client asked to switch protocols (``Upgrade``); only WebSocket is relayed."""
    length: bytes | None = None
    """``Content-Length`` as sent (``b"?"`` when sent more than once), read while parsing."""
    coded: bool = False
    """A ``Transfer-Encoding`` was sent."""
    parser: httptools.HttpRequestParser | None = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-length":  # the framing, noted now rather than searched for later
            self.length = value if self.length is None else b"?"
        elif name == b"transfer-encoding":
            self.coded = True

    def on_headers_complete(self) -> None:
        # Read now: once the message is complete the parser forgets its connection flags.
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def one(self, name: bytes) -> bytes | None:
        """The value of a header sent once; None when absent *or repeated* (ambiguous)."""
        found = None
        for key, value in self.headers:
            if key == name:
                if found is not None:
                    return None
                found = value
        return found

    def count(self, name: bytes) -> int:
        return sum(1 for key, _ in self.headers if key == name)

    def cookie(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == b"cookie":
                for pair in value.split(b";"):
                    cname, _, cvalue = pair.strip().partition(b"=")
                    if cname == name:
                        return cvalue.decode("latin-1")
        return None

    def wants_html(self) -> bool:
        return any(k == b"accept" and b"text/html" in v for k, v in self.headers)

    def body_length(self) -> int | None:
        """The body's length when ``Content-Length`` alone frames it (0 without one); None when
        the framing is anything else (a transfer coding, a repeated or non-numeric length)."""
        if self.coded:
            return None
        if self.length is None:
            return 0
        return int(self.length) if self.length.isdigit() else None

    def is_websocket(self) -> bool:
        upgrade = self.one(b"upgrade")
        return (
            self.upgrade
            and self.method == b"GET"
            and upgrade is not None
            and upgrade.strip().lower() == b"websocket"
        )


def parse_request_head(head: bytes) -> RequestHead | None:
    """The head (up to and including the blank line), or None when it is not valid HTTP/1.x."""
    parsed = RequestHead()
    parser = parsed.parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        parsed.upgrade = True
    except httptools.HttpParserError:
        return None
    parsed.method = parser.get_method()
    parsed.version = parser.get_http_version()
    parsed.parser = None
    return parsed


def _strip_cookies(value: bytes) -> bytes:
    kept = [
        pair.strip()
        for pair in value.split(b";")
        if (name := pair.split(b"=", 1)[0].strip()) and name not in GATEWAY_COOKIES
    ]
    return b"; ".join(kept)


def forwardable(
    headers: Headers,
    *,
    websocket: bool = False,
    keep_handshake: bool = False,
    reframe: bool = False,
) -> Headers:
    """The client's headers an engine may see.

    ``websocket``: the request is a WebSocket handshake. ``keep_handshake``: the proxy relays
    the handshake itself at the byte level, so ``Upgrade``, ``Connection: upgrade`` and the
    ``Sec-WebSocket-*`` headers go through; otherwise a WebSocket client library makes its own.
    ``reframe``: the caller writes the body's framing itself, so ``Content-Length`` is dropped
    too; otherwise it is kept, whatever ``Connection`` names.
    """
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens |= {t.strip().lower() for t in value.split(b",")} - FRAMING
    dropped = HOP_BY_HOP_AND_LENGTH if reframe else HOP_BY_HOP
    out: Headers = []
    for name, value in headers:
        if name in SET_BY_GATEWAY or name.startswith(b"x-aigc-"):
            continue
        if 0x5F in name and _looks_like_ours(name):  # "_" as an int: a memchr, unlike b"_"
            continue
        if name in WS_HANDSHAKE and websocket and not keep_handshake:
            continue
        if name in dropped or name in tokens:
            continue
        if name == b"cookie":
            value = _strip_cookies(value)
            if not value:
                continue
        elif name == b"authorization" and carries_gateway_token(value):
            continue  # the gateway's own API token: never an engine's business
        out.append((name, value))
    if websocket and keep_handshake:
        out += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    return out


def _looks_like_ours(name: bytes) -> bool:
    """``name`` (lower-cased) reads as a guarded one once ``_`` is taken for ``-``."""
    normal = name.replace(b"_", b"-")
    return normal in GUARDED or normal.startswith(b"x-aigc-")


def upstream_request(
    head: RequestHead, *, body_length: int, websocket: bool, gateway: Headers
) -> bytes:
    """The head the connection-level proxy sends an engine: the client's forwardable headers,
    ``Content-Length: body_length`` (the framing the body is forwarded with) when the client
    framed one, and the gateway's own headers (``forwarded_for``)."""
    headers = forwardable(head.headers, websocket=websocket, keep_handshake=True, reframe=True)
    if head.length is not None:  # the client framed a body (relayed only when unambiguous)
        headers.append((b"content-length", b"%d" % body_length))
    return request_head(head.method, head.target, headers + gateway)


def forwarded_for(
    *, client_ip: str, scheme: str, host: str, user_name: str, prefix: str | None
) -> Headers:
    """The headers the gateway sets on every request it relays."""
    ip = client_ip.encode("latin-1")
    out: Headers = [
        (b"x-forwarded-for", ip),
        (b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-real-ip", ip),
        (b"x-aigc-user", user_name.encode("utf-8")),
    ]
    if prefix:
        out.append((b"x-forwarded-prefix", prefix.encode("latin-1")))
    return out


def sets_gateway_cookie(value: bytes) -> bool:
    """A ``Set-Cookie`` value naming one of the gateway's cookies (name matched exactly)."""
    return value.split(b"=", 1)[0].strip() in GATEWAY_COOKIES


def downstream(headers: Headers, *, keep: frozenset[bytes] = frozenset()) -> Headers:
    """The engine's response headers a client may see: no hop-by-hop header (but those in
    ``keep``: a ``101``'s ``Upgrade`` and ``Connection``), no ``Set-Cookie`` of the gateway's."""
    return [
        (name, value)
        for name, value in headers
        if (name in keep or name not in HOP_BY_HOP)
        and not (name == b"set-cookie" and sets_gateway_cookie(value))
    ]


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(status: int, headers: Headers) -> bytes:
    line = STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
    lines = [line]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body (for ``writelines``)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
