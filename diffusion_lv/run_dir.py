"""The run directory is the record of a run: written once, read by every later invocation.

* ``config.json`` (the resolved config) and ``run.json`` (command line, version, git revision,
  devices, start time) are written once, when training starts from scratch; resuming, ``eval``
  and ``sample`` read them and never rewrite them.
* ``check_resume``: resuming with a config that changes what the checkpoint *is* (data, network,
  schedule, prediction, seed, EMA decays, optimiser structure) is refused before any restore,
  naming the differing keys.
* ``eval_config``: ``eval``/``sample``/``inpaint`` evaluate the recorded model; a ``--config``
  or override may change the eval-time sections (``sampler``, ``eval``, ``inpaint``) and nothing
  that defines the model.
* ``WorkdirLock``: one training run per workdir (a lock file naming host and pid; a lock whose
  process is gone on this host is stale and replaced).
* ``check_workdir``: a workdir that is a file or cannot be written is refused before anything.

Every refusal is a :class:`RunDirError` (a ``ValueError``) whose message names the keys or the
holder, raised before the workdir is touched.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess

from ml_collections import config_dict

import diffusion_lv
from diffusion_lv.config_files import flatten
from diffusion_lv.training.checkpoint import checkpoint_dir, saved_steps

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
LOG_FILE = "log.txt"  # the console of every invocation, appended
EVAL_SECTIONS = ("sampler", "eval", "inpaint")  # what eval/sample/inpaint may change
# What a checkpoint is: a change here makes the saved state another model (or another shape).
MODEL_SECTIONS = ("data", "model", "diffusion")
STATE_KEYS = ("seed", "training.ema_decays", "optimizer.name")


class RunDirError(ValueError):
    """A workdir that cannot be used as asked; the message says why and what to do."""


def _defining(flat: dict) -> dict:
    keys = {k: v for k, v in flat.items()
            if k.split(".")[0] in MODEL_SECTIONS or k in STATE_KEYS}
    clip = flat.get("optimizer.grad_clip")
    if clip is not None:  # clipping on or off changes the optimiser state's structure
        keys["optimizer.grad_clip > 0"] = clip > 0
    return keys


def differing_model_keys(recorded, given) -> list[str]:
    """``config.<key> (run: a, given: b)`` for every model-defining key that differs."""
    a, b = _defining(flatten(recorded)), _defining(flatten(given))
    return [f"config.{k} (run: {a.get(k, '<absent>')!r}, given: {b.get(k, '<absent>')!r})"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def read_config(workdir: str) -> config_dict.ConfigDict | None:
    """The run's recorded config, or None if the workdir has none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return config_dict.ConfigDict(json.load(f))


def has_checkpoints(workdir: str) -> bool:
    return bool(saved_steps(workdir))


def started(workdir: str) -> bool:
    """Whether training has saved anything here (usable, damaged or superseded steps): the
    record is written only before that."""
    folder = checkpoint_dir(workdir)
    return os.path.isdir(folder) and bool(os.listdir(folder))


def check_resume(workdir: str, config) -> None:
    """Refuse to resume a run whose recorded model differs from ``config``'s."""
    recorded = read_config(workdir)
    if recorded is None or not started(workdir):
        return
    differing = differing_model_keys(recorded, config)
    if differing:
        raise RunDirError(
            f"--workdir={workdir} holds a run of another model; resuming it with this config "
            f"would restore the wrong state. Differing keys: {'; '.join(differing)}. Use a new "
            "workdir, or the run's own config (its config.json)"
        )


def eval_config(workdir: str, given, given_explicitly: bool, overrides: dict):
    """The config eval/sample run with: the recorded one, with the eval-time sections taken from
    ``given`` (a ``--config`` file and overrides) or from ``overrides`` alone (no ``--config``).
    A difference in a model-defining key is refused."""
    recorded = read_config(workdir)
    if recorded is None:  # a run from before records: trust the command line
        return given
    if given_explicitly:
        differing = differing_model_keys(recorded, given)
    else:
        run = flatten(recorded)
        changed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
                   if k.split(".")[0] not in EVAL_SECTIONS}
        differing = [f"config.{k} (run: {run.get(k, '<absent>')!r}, given: {v!r})"
                     for k, v in changed.items() if run.get(k, "<absent>") != v]
    if differing:
        raise RunDirError(
            f"--workdir={workdir} was trained with another model; eval and sample may change "
            f"only {', '.join(s + '.*' for s in EVAL_SECTIONS)}. Differing keys: "
            f"{'; '.join(differing)}"
        )
    config = config_dict.ConfigDict(recorded.to_dict())
    source = flatten(given) if given_explicitly else overrides
    updates = {k: v for k, v in source.items() if k.split(".")[0] in EVAL_SECTIONS}
    with config.unlocked():
        for key, value in updates.items():
            section, name = key.split(".", 1)
            if section not in config:  # recorded before the section existed
                config[section] = config_dict.ConfigDict()
            config[section][name] = value
    return config


def log_file(workdir: str) -> str:
    return os.path.join(workdir, LOG_FILE)


def check_workdir(workdir: str, mode: str) -> None:
    """Refuse a workdir that is a file, cannot be written, or (eval/sample) holds no run."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunDirError(f"--workdir={workdir} is a file; valid: a directory (new, or a run's)")
    if mode != "train":
        if not has_checkpoints(workdir):
            raise RunDirError(
                f"--workdir={workdir} holds no checkpoint: run --mode=train there first"
            )
        return
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"--workdir={workdir} cannot be written ({existing} is read-only)")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(diffusion_lv.__file__),
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_record(workdir: str, config, argv: list[str], devices: list[str]) -> None:
    """``config.json`` and ``run.json``, once: at the start of a run from scratch."""
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    record = {
        "command": argv,
        "version": diffusion_lv.__version__,
        "git_revision": _git_revision(),
        "devices": devices,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump(record, f, indent=2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` one training run at a time in a workdir."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.stale: dict | None = None  # the stale lock replaced, to report

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def __enter__(self):
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder.get("host") == me["host"]
                if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                    self.stale = holder
                    os.remove(self.path)
                    continue
                raise RunDirError(
                    f"--workdir={os.path.dirname(self.path)} is in use by pid "
                    f"{holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                    f"{holder.get('since', '?')}; wait for that run, or delete {self.path} if it "
                    "is dead"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise RunDirError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        try:
            if self._holder().get("pid") == os.getpid():
                os.remove(self.path)
        except OSError:
            pass
        return False
