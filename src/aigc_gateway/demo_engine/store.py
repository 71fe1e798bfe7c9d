"""The demo engine's data folder: outputs, uploaded inputs and a small state file.

Layout of ``<data_dir>``::

    outputs/<timestamp>-<slug>.png    generated images
    outputs/<timestamp>-<slug>.json   sidecar: prompt, seed, steps, created, ...
    inputs/<name>                     files received by ``POST /api/upload``
    state.json                        {"generations": N, "last_output": ..., "updated": ...}

Every file is written atomically (temporary file in the same folder, then
:func:`os.replace`), so a reader or a crash never sees half a file. Temporary
files start with a dot, which no valid public name does, so they are never
listed or served. All methods here are blocking; the web app calls them in a
worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["OutputStore", "atomic_write", "create_temp", "is_safe_name", "slugify"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SLUG_STRIP = re.compile(r"[^a-z0-9]+")


def is_safe_name(name: str) -> bool:
    """A plain file name: letters, digits, ``.``, ``_``, ``-``; no leading dot; <= 128 chars."""
    return _SAFE_NAME.fullmatch(name) is not None


def slugify(text: str, max_length: int = 40) -> str:
    """A lowercase, dash-separated, file-name-safe version of ``text`` (``image`` if empty)."""
    slug = _SLUG_STRIP.sub("-", text.lower()).strip("-")[:max_length].rstrip("-")
    return slug or "image"


def create_temp(folder: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """Create a new, empty hidden file in ``folder``; returns ``(fd, path)``.

    Unlike :func:`tempfile.mkstemp` the file gets the usual permissions (``0o666``
    minus the umask), so outputs stay readable for the user's other tools.
    """
    while True:
        path = folder / f".{prefix}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class OutputStore:
    """Files of one demo engine instance, rooted at ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.outputs_dir = data_dir / "outputs"
        self.inputs_dir = data_dir / "inputs"
        self.state_path = data_dir / "state.json"
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"generations": 0, "last_output": None, "updated": None}

    def open(self) -> None:
        """Create the folders if needed and load ``state.json`` (a broken file counts as empty)."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.inputs_dir.mkdir(parents=True, exist_ok=True)
        try:
            loaded = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return
        if isinstance(loaded, dict):
            generations = loaded.get("generations")
            if isinstance(generations, int) and not isinstance(generations, bool):
                self._state["generations"] = max(generations, 0)
            last = loaded.get("last_output")
            self._state["last_output"] = last if isinstance(last, str) else None
            updated = loaded.get("updated")
            self._state["updated"] = updated if isinstance(updated, str) else None

    @property
    def generations(self) -> int:
        """How many images this data folder has produced, across restarts."""
        with self._lock:
            count: int = self._state["generations"]
            return count

    def state(self) -> dict[str, Any]:
        """A copy of the persisted state."""
        with self._lock:
            return dict(self._state)

    def save_output(self, png: bytes, meta: dict[str, Any]) -> str:
        """Store a generated image and its sidecar; bump the counter. Returns the file name."""
        created = _now_iso()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{slugify(str(meta.get('prompt', '')))}"
        with self._lock:
            name = f"{base}.png"
            counter = 1
            while (self.outputs_dir / name).exists():
                counter += 1
                name = f"{base}-{counter}.png"
            sidecar = {**meta, "created": created, "file": name}
            # Sidecar first: once the PNG is visible, its metadata is too.
            atomic_write(
                self.outputs_dir / f"{name[:-4]}.json",
                json.dumps(sidecar, indent=2).encode("utf-8"),
            )
            atomic_write(self.outputs_dir / name, png)
            self._state["generations"] += 1
            self._state["last_output"] = name
            self._state["updated"] = created
            atomic_write(self.state_path, json.dumps(self._state, indent=2).encode("utf-8"))
        return name

    def list_outputs(self) -> list[dict[str, Any]]:
        """``[{name, size, prompt, created}]`` for every stored image, newest first."""
        items: list[dict[str, Any]] = []
        try:
            entries = list(os.scandir(self.outputs_dir))
        except FileNotFoundError:
            return items
        for entry in entries:
            if not (entry.name.endswith(".png") and is_safe_name(entry.name)):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            prompt: str | None = None
            created = datetime.fromtimestamp(info.st_mtime, UTC).isoformat(timespec="microseconds")
            try:
                meta = json.loads(
                    (self.outputs_dir / f"{entry.name[:-4]}.json").read_text(encoding="utf-8")
                )
            except (OSError, ValueError, UnicodeDecodeError):
                meta = None
            if isinstance(meta, dict):
                if isinstance(meta.get("prompt"), str):
                    prompt = meta["prompt"]
                if isinstance(meta.get("created"), str):
                    created = meta["created"]
            items.append(
                {"name": entry.name, "size": info.st_size, "prompt": prompt, "created": created}
            )
        items.sort(key=lambda item: (item["created"], item["name"]), reverse=True)
        return items

    def output_path(self, name: str) -> Path | None:
        """The path of a stored output file, or ``None`` unless ``name`` is a plain regular file."""
        if not is_safe_name(name):
            return None
        path = self.outputs_dir / name
        try:
            info = path.lstat()
        except OSError:
            return None
        return path if stat.S_ISREG(info.st_mode) else None

    def input_path(self, name: str) -> Path | None:
        """Where an upload called ``name`` goes, or ``None`` if the name is not safe."""
        return self.inputs_dir / name if is_safe_name(name) else None
