"""One operating-system uid per user, from a configured range, kept for good.

Every engine of a user runs as that user's uid (and a group of the same number), so the files
in their volumes are theirs on the host and no other user's engine can open them. The map is a
JSON file (``{"version": 1, "uids": {"<owner>": <uid>}}``) next to a lock file:

- :meth:`UidMap.uid_for` holds an exclusive ``flock`` while it reads, picks and writes, so
  concurrent starts (threads, or several gateway processes) never hand one uid to two users;
- the file is replaced atomically (write, ``fsync``, rename), and a ``flock`` dies with its
  holder, so a ``kill -9`` at any moment leaves either the old map or the new one;
- a user keeps their uid forever (uids are never recycled: a recycled uid would own the old
  user's files).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UidExhausted", "UidMap", "UidRange", "parse_range"]

_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


class UidExhausted(RuntimeError):
    """Every uid of the range is taken."""


@dataclass(frozen=True, slots=True)
class UidRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1000 <= self.first <= self.last < 2**32 - 1:
            raise ValueError(
                f"uid range {self.first}-{self.last}: both ends between 1000 and 4294967294, "
                "first <= last"
            )

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_range(text: str) -> UidRange:
    """``"200000-265535"`` -> :class:`UidRange`; raises :class:`ValueError` naming the text."""
    found = _RANGE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a uid range like 200000-265535")
    return UidRange(int(found.group(1)), int(found.group(2)))


class UidMap:
    """The persistent owner -> uid map in ``path`` (see the module docstring)."""

    def __init__(self, path: Path, uid_range: UidRange) -> None:
        self._path = Path(path)
        self._lock = self._path.with_name(self._path.name + ".lock")
        self._range = uid_range

    def uid_for(self, owner: str) -> int:
        """The uid of ``owner``, given one now if they have none yet."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            uids = self._read()
            if owner in uids:
                return uids[owner]
            taken = set(uids.values())
            uid = next(
                (u for u in range(self._range.first, self._range.last + 1) if u not in taken), None
            )
            if uid is None:
                raise UidExhausted(
                    f"every uid of the sandbox range {self._range} is taken; widen "
                    "sandbox_uid_range"
                )
            uids[owner] = uid
            self._write(uids)
            return uid

    def known(self) -> dict[str, int]:
        """The whole map (for ``doctor`` and tests)."""
        with self._locked():
            return self._read()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        uids = data.get("uids", {}) if isinstance(data, dict) else {}
        return {str(k): int(v) for k, v in uids.items()}

    def _write(self, uids: dict[str, int]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "uids": uids}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
