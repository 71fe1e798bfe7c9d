"""Paths opened beneath a folder's descriptor, never following a symbolic link at any step.

A user's engine writes its own volume while the gateway serves it, so it can swap a folder for a
link to somewhere else at any moment. Checking a path and opening it later (even with symlinks
resolved in between) loses that race. Here a path is walked from an open descriptor of a trusted
folder one component at a time with ``O_NOFOLLOW | O_DIRECTORY``, and what the walk ends on is
used by descriptor only: listed with ``scandir(fd)``, read with ``read(fd)``, written as a new file
inside the opened folder and renamed within it, removed with ``unlink``/``rmtree`` relative to it.
A link met on the way ends the walk (:class:`LinkInTheWay`), whatever it points to.

Every function takes and returns plain descriptors; the caller closes what it is given (``with
closing_fd(...)``). Errors are ``OSError`` (translated to the gateway's vocabulary by the files
service) or :class:`LinkInTheWay` / :class:`NotAFolder`, both ``OSError`` subclasses.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
"""``O_NONBLOCK``: opening a FIFO an engine left in its volume must not hang the gateway."""
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_MODE = 0o600
NEW_DIR_MODE = 0o755


class Kind(Enum):
    """What a name in a folder is, seen without following it."""

    FILE = "file"
    """A regular file."""
    FOLDER = "folder"
    LINK = "link"
    """A symbolic link: listed, never followed, entered or read."""
    OTHER = "other"
    """A FIFO, socket or device node: neither listed nor read."""


class LinkInTheWay(OSError):
    """A component of the path is a symbolic link."""


class NotAFolder(OSError):
    """A component of the path that must be a folder is something else."""


def kind_of(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.FOLDER
    return Kind.LINK if stat.S_ISLNK(mode) else Kind.OTHER


def lstat_at(folder: int, name: str) -> os.stat_result:
    """The entry ``name`` of ``folder`` itself (a link is not followed)."""
    return os.stat(name, dir_fd=folder, follow_symlinks=False)


@contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def open_root(path: Path) -> int:
    """A descriptor of the folder at ``path`` (its last component may not be a link)."""
    return os.open(path, DIR_FLAGS)


def _refusal(folder: int, name: str, exc: OSError) -> OSError:
    """Why ``name`` could not be opened as a folder: a link, not a folder, or ``exc`` itself."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return exc
    try:
        kind = kind_of(lstat_at(folder, name).st_mode)
    except OSError as gone:
        return gone
    if kind is Kind.LINK:
        return LinkInTheWay(errno.ELOOP, "a link is in the way", name)
    if kind is Kind.FOLDER:  # swapped back meanwhile: still refused, the walk saw a link
        return LinkInTheWay(errno.ELOOP, "a link was in the way", name)
    return NotAFolder(errno.ENOTDIR, "not a folder", name)


def open_folder(folder: int, name: str, *, create: bool = False) -> int:
    """The sub-folder ``name`` of ``folder`` (made first when ``create`` and missing)."""
    if create:
        with suppress(FileExistsError):
            os.mkdir(name, NEW_DIR_MODE, dir_fd=folder)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=folder)
    except OSError as exc:
        raise _refusal(folder, name, exc) from None


def walk(folder: int, parts: Sequence[str], *, create: bool = False) -> int:
    """A new descriptor of ``folder/parts...``, each step opened relative to the last; with no
    parts, a duplicate of ``folder``. ``create`` makes missing folders on the way."""
    current = os.dup(folder)
    for name in parts:
        try:
            step = open_folder(current, name, create=create)
        finally:
            os.close(current)
        current = step
    return current


def open_file(folder: int, name: str) -> tuple[int, os.stat_result]:
    """The regular file ``name`` of ``folder``, open for reading, and its status."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkInTheWay(errno.ELOOP, "a link is in the way", name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", name)
    os.set_blocking(fd, True)
    return fd, st


def tree_size(folder: int) -> int:
    """Bytes of the regular files in ``folder`` and every real sub-folder (links not followed;
    what vanishes or turns into a link while counting is skipped). Depth first, holding one
    descriptor per level of depth (as ``shutil.rmtree`` does), however wide the tree."""
    stack: list[tuple[int, list[str]]] = []
    try:
        total = _enter(stack, os.dup(folder))
        while stack:
            fd, pending = stack[-1]
            if not pending:
                os.close(stack.pop()[0])
                continue
            with suppress(OSError):
                total += _enter(stack, open_folder(fd, pending.pop()))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def _enter(stack: list[tuple[int, list[str]]], fd: int) -> int:
    """Scan the folder ``fd`` and push it with its sub-folders; the bytes of its files."""
    try:
        folders, size = _scan(fd)
    except BaseException:
        os.close(fd)
        raise
    stack.append((fd, folders))
    return size


def _scan(folder: int) -> tuple[list[str], int]:
    """The sub-folder names of ``folder`` and the bytes of its regular files."""
    folders: list[str] = []
    size = 0
    with os.scandir(folder) as it:
        for entry in it:
            with suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
    return folders, size


def size_at(path: Path) -> int:
    """:func:`tree_size` of the folder at ``path``; 0 when it is missing or not a real folder."""
    try:
        root = open_root(path)
    except OSError:
        return 0
    with closing_fd(root):
        return tree_size(root)


def remove(folder: int, name: str) -> None:
    """Remove ``name`` from ``folder``: a file or link by unlinking it (a link's target is never
    touched), a folder with everything in it, walked by descriptor (see :func:`empty`)."""
    if kind_of(lstat_at(folder, name).st_mode) is not Kind.FOLDER:
        os.unlink(name, dir_fd=folder)
        return
    with closing_fd(open_folder(folder, name)) as fd:
        empty(fd)
    os.rmdir(name, dir_fd=folder)


def empty(folder: int) -> None:
    """Remove everything in ``folder``. Each sub-folder is entered with ``O_NOFOLLOW``, and
    ``unlink``/``rmdir`` never follow a link, so a folder swapped for a link meanwhile is
    refused (or the link itself removed), never what it points to. Iterative: one descriptor per
    level of depth, no recursion limit."""
    stack: list[tuple[int, str]] = [(os.dup(folder), "")]
    try:
        while stack:
            fd, name = stack[-1]
            sub = _clear_files(fd)
            if sub is not None:
                stack.append((open_folder(fd, sub), sub))
                continue
            stack.pop()
            os.close(fd)
            if stack:
                os.rmdir(name, dir_fd=stack[-1][0])
    finally:
        for fd, _ in stack:
            os.close(fd)


def _clear_files(folder: int) -> str | None:
    """Unlink every entry of ``folder`` that is not a folder; the name of a folder left, if any."""
    left = None
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                left = entry.name
            else:
                with suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=folder)
    return left
