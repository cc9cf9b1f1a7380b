"""The console of a run: quiet by default, and kept in the workdir.

``quiet(verbose)`` drops what a user cannot act on (orbax's per-save INFO lines, jax's "Unable to
initialize backend 'tpu'" on machines without one, XLA's native "Very slow compile?" banners) unless
``--verbosity`` was given. ``kept_in(path)`` copies everything the run prints (stdout and stderr of
this process) into a log file beside its checkpoints, with progress bars reduced to their last
state per line.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import traceback

# Native (C++) XLA logs at ERROR and below, e.g. "Very slow compile?": read by XLA when it first
# logs, so setting it before the first compilation is enough. A real failure still raises.
NATIVE_LOG_LEVEL = "3"


def quiet(verbose: bool) -> None:
    """Console at WARNING (absl and jax loggers) and native XLA logs off, unless ``verbose``.
    Call before anything compiles; an explicit ``TF_CPP_MIN_LOG_LEVEL`` is kept."""
    if verbose:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    # jax reports the backends it could not start at INFO through its own logger, which absl's
    # handler prints when absl runs at INFO (the default under absl.app).
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", NATIVE_LOG_LEVEL)


class _Tee:
    """A text stream that writes to ``stream`` and, line by line, to ``log``; of a line redrawn
    with carriage returns (a progress bar on a terminal) the log keeps the last drawing."""

    def __init__(self, stream, log):
        self.stream, self.log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._line += text
        *complete, self._line = self._line.split("\n")
        for line in complete:
            self.log.write(line.rsplit("\r", 1)[-1] + "\n")
        if complete:
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def close_line(self) -> None:
        if self._line.rsplit("\r", 1)[-1]:
            self.log.write(self._line.rsplit("\r", 1)[-1] + "\n")
        self._line = ""

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def kept_in(path: str, header: str, enabled: bool = True):
    """Inside, stdout and stderr are also appended to ``path`` (after a ``# <time> header``
    line), so a run's console stays with the run. ``enabled=False`` (processes other than 0)
    does nothing."""
    if not enabled:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        log.write(f"# {stamp} {header}\n")
        streams = sys.stdout, sys.stderr
        tees = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        sys.stdout, sys.stderr = tees
        try:
            yield
        except Exception:  # the traceback Python prints after this block, kept too
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = streams
            for tee in tees:
                tee.close_line()
