"""The run's console copy: each line as the user last saw it, tracebacks included."""

import io
import sys

import pytest

from diffusion_lv import console


def test_log_keeps_the_last_drawing_of_a_redrawn_line_and_the_traceback(tmp_path):
    path = tmp_path / "run" / "log.txt"
    with console.kept_in(str(path), "first"):
        print("plain line")
        sys.stderr.write("\rbar 1/3\rbar 2/3\rbar 3/3\n")
        sys.stderr.write("unfinished")
    with pytest.raises(ValueError), console.kept_in(str(path), "second"):
        raise ValueError("boom")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith(" first")
    assert lines[1:4] == ["plain line", "bar 3/3", "unfinished"]
    assert lines[4].endswith(" second")  # appended, not overwritten
    assert lines[-1] == "ValueError: boom"


def test_streams_are_restored_and_a_disabled_log_writes_nothing(tmp_path):
    before = sys.stdout, sys.stderr
    with console.kept_in(str(tmp_path / "a.txt"), "x"):
        assert sys.stdout is not before[0]
    assert (sys.stdout, sys.stderr) == before
    with console.kept_in(str(tmp_path / "b.txt"), "x", enabled=False):
        print("not kept")
    assert not (tmp_path / "b.txt").exists()


def test_tee_passes_terminal_queries_through():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tee = console._Tee(Terminal(), io.StringIO())  # noqa: SLF001
    assert tee.isatty()
