"""The descriptor walk under the files service, on a real file system: no link is followed at
any step (whatever it points to), FIFOs do not hang, sizes and deletions never leave the folder,
and deep or wide trees need neither recursion nor a descriptor per folder."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigc_gateway.runtime import beneath
from aigc_gateway.runtime.beneath import Kind, LinkInTheWay, NotAFolder, closing_fd


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/`` with ``a/b/f.txt`` (5 bytes) and ``outside/`` beside it holding ``secret``."""
    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    (tmp_path / "root" / "a" / "b" / "f.txt").write_bytes(b"hello")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"s" * 1000)
    return tmp_path / "root"


@pytest.fixture
def root(tree: Path) -> Iterator[int]:
    with closing_fd(beneath.open_root(tree)) as fd:
        yield fd


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_walk_opens_real_folders_and_creates_missing_ones(tree: Path, root: int) -> None:
    with closing_fd(beneath.walk(root, ["a", "b"])) as fd:
        assert "f.txt" in os.listdir(fd)
    with closing_fd(beneath.walk(root, ["a", "new", "deeper"], create=True)):
        pass
    assert (tree / "a" / "new" / "deeper").is_dir()
    with closing_fd(beneath.walk(root, [])) as same:
        assert os.path.samestat(os.fstat(same), os.fstat(root))


@pytest.mark.parametrize(
    "where", [["link"], ["link", "secret"], ["a", "inner"], ["a", "inner", "deeper"]]
)
def test_a_link_anywhere_on_the_path_ends_the_walk(tree: Path, root: int, where: list[str]) -> None:
    (tree / "link").symlink_to(tree.parent / "outside")
    (tree / "a" / "inner").symlink_to("b")  # even a link that stays inside
    before = open_fds()
    with pytest.raises(LinkInTheWay):
        beneath.walk(root, where, create=True)
    with pytest.raises(LinkInTheWay):
        beneath.open_file(root, "link")
    assert open_fds() == before  # nothing leaked on the way
    assert sorted(os.listdir(tree.parent / "outside")) == ["secret"]  # nothing created there


def test_a_file_on_the_path_is_not_a_folder(root: int) -> None:
    with pytest.raises(NotAFolder):
        beneath.walk(root, ["a", "b", "f.txt", "x"])
    with pytest.raises(FileNotFoundError):
        beneath.walk(root, ["nope"])


def test_open_file_reads_regular_files_only(tree: Path, root: int) -> None:
    with closing_fd(beneath.walk(root, ["a", "b"])) as folder:
        fd, st = beneath.open_file(folder, "f.txt")
        with closing_fd(fd):
            assert os.read(fd, 100) == b"hello" and st.st_size == 5
    os.mkfifo(tree / "pipe")  # opening it must neither block nor succeed
    for name in ("pipe", "a"):
        with pytest.raises(IsADirectoryError):
            beneath.open_file(root, name)


def test_tree_size_counts_files_and_never_follows_links(tree: Path, root: int) -> None:
    (tree / "to-outside").symlink_to(tree.parent / "outside")
    (tree / "to-secret").symlink_to(tree.parent / "outside" / "secret")
    (tree / "a" / "g.bin").write_bytes(b"g" * 10)
    assert beneath.tree_size(root) == 15
    assert beneath.size_at(tree) == 15
    assert beneath.size_at(tree / "to-outside") == 0  # the root itself may not be a link
    assert beneath.size_at(tree / "missing") == 0


def test_wide_and_deep_trees_are_counted_and_removed(tree: Path, root: int) -> None:
    wide = tree / "wide"
    for i in range(300):
        (wide / str(i)).mkdir(parents=True)
        (wide / str(i) / "f").write_bytes(b"w")
    deep = tree / "deep"
    with closing_fd(beneath.walk(root, ["deep", *["d"] * 1200], create=True)) as bottom:
        beneath_file = os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=bottom)
        os.write(beneath_file, b"deep")
        os.close(beneath_file)
    before = open_fds()
    assert beneath.tree_size(root) == 5 + 300 + 4  # past the recursion limit, 300 wide
    assert open_fds() == before
    beneath.remove(root, "wide")
    beneath.remove(root, "deep")
    assert not wide.exists() and not deep.exists() and open_fds() == before


def test_remove_unlinks_links_and_never_touches_their_targets(tree: Path, root: int) -> None:
    outside = tree.parent / "outside"
    (tree / "a" / "to-outside").symlink_to(outside)
    (tree / "to-secret").symlink_to(outside / "secret")
    beneath.remove(root, "to-secret")
    beneath.remove(root, "a")  # a tree holding a link to a folder outside
    assert sorted(os.listdir(tree)) == [] and (outside / "secret").read_bytes() == b"s" * 1000
    with pytest.raises(FileNotFoundError):
        beneath.remove(root, "a")


def test_kinds() -> None:
    assert beneath.kind_of(os.lstat("/").st_mode) is Kind.FOLDER
    assert beneath.kind_of(os.lstat("/dev/null").st_mode) is Kind.OTHER


def test_a_racing_swap_never_leads_outside(tree: Path, root: int) -> None:
    """A thread keeps swapping ``a`` between the real folder and a link to ``outside`` while the
    walk, the size and the removal run; none of them ever reaches ``outside``."""
    outside = tree.parent / "outside"
    (tree / "a" / "b" / "secret").write_bytes(b"mine")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(tree / "a", tree / "real")
            (tree / "a").symlink_to(outside)
            (tree / "a").unlink()
            os.rename(tree / "real", tree / "a")

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(300):
            assert beneath.tree_size(root) < 1000  # never outside's 1000 bytes
            try:
                with closing_fd(beneath.walk(root, ["a", "b"])) as folder:
                    fd, _st = beneath.open_file(folder, "secret")
                    with closing_fd(fd):
                        assert os.read(fd, 10) == b"mine"
            except (LinkInTheWay, FileNotFoundError):
                pass
    finally:
        stop.set()
        swapper.join()
    assert (outside / "secret").read_bytes() == b"s" * 1000
