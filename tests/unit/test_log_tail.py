"""An engine's log tail counts lines, within a byte cap, over the rotated and current files."""

from __future__ import annotations

from pathlib import Path

from aigc_gateway.runtime.local_procs import last_lines, read_log_tail


def test_last_lines() -> None:
    assert last_lines("a\nb\nc\n", 2) == "b\nc\n"
    assert last_lines("a\nb\nc", 1) == "c"  # a last line without its newline is a line
    assert last_lines("a\nb\n", 5) == "a\nb\n"
    assert last_lines("a\n", 0) == ""
    assert last_lines("", 3) == ""


def test_tail_counts_lines_across_rotation_within_the_byte_cap(tmp_path: Path) -> None:
    log, rotated = tmp_path / "engine.log", tmp_path / "engine.log.1"
    rotated.write_text("".join(f"old {i}\n" for i in range(100)))
    log.write_text("new 0\nnew 1\n")
    assert read_log_tail(log, rotated, 1 << 20, lines=3) == "old 99\nnew 0\nnew 1\n"
    assert read_log_tail(log, rotated, 1 << 20, lines=1) == "new 1\n"
    # The byte cap still bounds what is read, however many lines are asked for.
    capped = read_log_tail(log, rotated, 20, lines=1000)
    assert len(capped.encode()) <= 20 and capped.endswith("new 0\nnew 1\n")
    assert read_log_tail(log, rotated, 1 << 20).count("\n") == 102  # no line limit


def test_a_missing_log_is_empty(tmp_path: Path) -> None:
    assert read_log_tail(tmp_path / "none", tmp_path / "none.1", 4096, lines=10) == ""
