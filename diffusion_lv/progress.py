"""Training logs: a one-line console progress display and TensorBoard event files.

The console line is rewritten in place on a terminal (``\\r``) and printed once per log interval
otherwise (files, CI). TensorBoard files are written with tensorboardX (no TensorFlow needed) to
``<workdir>/tensorboard``; only process 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import numpy as np


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine:
    """``step 1200/4000 (30%) loss 0.1234 grad 0.45 | 85.2 steps/s | ETA 0:33``."""

    def __init__(self, num_steps: int, stream=None, enabled: bool = True):
        self.num_steps = num_steps
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and jax.process_index() == 0
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def update(self, step: int, loss: float, grad_norm: float, steps_per_sec: float) -> None:
        if not self.enabled:
            return
        rate = "? steps/s | ETA ?"  # the first window holds the compilation: no rate yet
        if steps_per_sec > 0:
            eta = (self.num_steps - step) / steps_per_sec
            rate = f"{steps_per_sec:.1f} steps/s | ETA {format_duration(eta)}"
        line = (
            f"step {step}/{self.num_steps} ({100.0 * step / self.num_steps:.0f}%) "
            f"loss {loss:.4g} grad {grad_norm:.3g} | {rate}"
        )
        if self.interactive:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends the in-place progress line first)."""
        if not self.enabled:
            return
        if self.interactive and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def track(items, total: int, label: str, stream=None, enabled: bool = True):
    """Yield ``items`` while drawing ``label [#####-----] 5/10 | 1.2 s/it | ETA 0:06``.

    The bar advances when the next item is requested, i.e. after the caller has finished with
    the previous one (a caller that syncs on its result measures real work, not dispatch). On a
    terminal the line is rewritten in place; otherwise (files, CI) it is printed at about every
    tenth of the work. Only process 0 draws.
    """
    stream = sys.stderr if stream is None else stream
    enabled = enabled and jax.process_index() == 0 and total > 0
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    start = time.perf_counter()
    printed = -1

    def draw(done: int) -> None:
        nonlocal printed
        if not enabled or (not interactive and done * 10 // total == printed):
            return
        printed = done * 10 // total
        elapsed = time.perf_counter() - start
        filled = int(20 * done / total)
        rate = "? s/it | ETA ?"  # nothing measured before the first item ends
        if done:
            per_item = elapsed / done
            rate = f"{per_item:.2f} s/it | ETA {format_duration(per_item * (total - done))}"
        line = f"{label} [{'#' * filled}{'-' * (20 - filled)}] {done}/{total} | {rate}"
        stream.write(("\r" + line) if interactive else line + "\n")
        if interactive and done == total:
            stream.write("\n")
        stream.flush()

    done = 0
    draw(done)
    for item in items:
        yield item
        done += 1
        draw(done)


@contextlib.contextmanager
def phase(label: str, stream=None, enabled: bool = True):
    """One line ``label: 3.2 s`` when the block ends (only process 0), so no phase of an
    evaluation is silent: ``with phase("sampled 1000 with heun at NFE 35"): ...``."""
    start = time.perf_counter()
    yield
    if enabled and jax.process_index() == 0:
        stream = sys.stderr if stream is None else stream
        stream.write(f"{label}: {time.perf_counter() - start:.1f} s\n")
        stream.flush()


class TensorBoard:
    """tensorboardX ``SummaryWriter`` in ``<workdir>/tensorboard``; a no-op off process 0."""

    def __init__(self, workdir: str):
        self.writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def figure(self, step: int, name: str, figure) -> None:
        if self.writer is not None:
            self.writer.add_figure(name, figure, step, close=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class RateMeter:
    """Steps per second over the last window (the first, compiling call is excluded)."""

    def __init__(self):
        self._time = None
        self._step = None

    @property
    def started(self) -> bool:
        return self._time is not None

    def start(self, step: int) -> None:
        self._time, self._step = time.perf_counter(), step

    def rate(self, step: int) -> float:
        if self._time is None or step == self._step:
            return float("nan")
        return (step - self._step) / (time.perf_counter() - self._time)
