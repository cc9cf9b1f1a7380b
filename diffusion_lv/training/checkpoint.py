"""Checkpoints of the train state: orbax ``CheckpointManager`` in ``<workdir>/checkpoints``.

* **Atomic saves.** Orbax writes a step into a temporary folder and renames it when every item is
  complete, so a process killed mid-save leaves the previous checkpoint as the latest one.
* **A digest of every leaf** (SHA-256 of its bytes, with dtype and shape, keyed by its path) is
  saved *inside* the step as a second orbax item, ``<step>/digest`` (JSON), beside the state in
  ``<step>/default`` (the folder orbax's single-item mode uses, so checkpoints of older versions
  read the same way, and new ones read in older versions). Being part of the same atomic save, a
  step has its digest from the moment it exists. Orbax checksums its index, not array values.
* **Verified restore.** Before restoring, the stored leaf paths, shapes and dtypes are compared
  with the target (a mismatch is another model or optimiser, not damage: an error that moves
  nothing); after restoring, the digests are recomputed on host copies and compared. A step
  without a digest (an older version) is restored with a one-line warning.
* **Fallback** (``resume``): a step that fails to restore or to verify is moved aside to
  ``<step>.corrupt`` (``.corrupt.1``, ... if taken), reported in one line, and the previous step is
  tried, down to none; if no step is usable a :class:`CheckpointError` says how to start fresh.
  Orbax ignores these folders (not step numbers).
* **Retention** keeps the last ``keep`` steps *and* the step the run resumed from (the newest
  verified one) until a later run resumes from a newer one: at most ``keep + 1`` steps on disk.
* ``resume(like, step)`` restores exactly that step (an error listing the saved steps if it is not
  saved or fails verification) and moves later steps aside to ``<step>.superseded``, so that
  saves at those steps write the new trajectory instead of keeping the old one.

Restoring goes against an abstract target built from a freshly initialised state, so the
optimiser state comes back with its structure (not as plain lists) and the arrays land with the
given sharding. A read-only ``Checkpointer`` (eval) verifies the same way and changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import sys
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusion_lv.training.state import TrainState

STATE_ITEM = "default"  # orbax's item name in single-item mode: older checkpoints hold only it
DIGEST_ITEM = "digest"
DIGEST_FORMAT = 1
_MOVED = re.compile(r"^(\d+)\.(corrupt|superseded)(\.\d+)?$")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or not the one asked for; the message names steps and what to do."""


class _Damaged(Exception):
    """A step that cannot be restored or fails verification; the message is the reason."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def saved_steps(workdir: str) -> list[int]:
    """The finalised steps in a workdir, read from the folder names without opening orbax
    (unfinished saves, ``.corrupt`` and ``.superseded`` folders are not numbers)."""
    folder = checkpoint_dir(workdir)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(name) for name in names if name.isdigit())


def _first_line(err: BaseException) -> str:
    """The first line of the error's root cause (orbax wraps TensorStore's precise message in a
    page-long one), at most 300 characters."""
    while (cause := err.__cause__ or (None if err.__suppress_context__ else err.__context__)):
        err = cause
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _leaf_name(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def leaf_digests(state) -> dict[str, dict | None]:
    """``{leaf path: {dtype, shape, sha256}}`` of host copies; None for a leaf this process
    cannot read whole (sharded over other processes' devices)."""
    out = {}
    for path, leaf in ocp.tree.to_flat_dict(state).items():
        if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable
                                                 or leaf.is_fully_replicated):
            out[_leaf_name(path)] = None
            continue
        array = np.asarray(jax.device_get(leaf))
        out[_leaf_name(path)] = {"dtype": str(array.dtype), "shape": list(array.shape),
                                 "sha256": _sha256(array)}
    return out


def _digest_problem(saved, state) -> str | None:
    """None if ``state`` matches the saved digest, else the reason (naming a leaf)."""
    if not (isinstance(saved, dict) and saved.get("format") == DIGEST_FORMAT
            and isinstance(saved.get("leaves"), dict)):
        return "unreadable digest"
    expected, actual = saved["leaves"], leaf_digests(state)
    bad = sorted(k for k in expected.keys() | actual.keys()
                 if k not in expected or k not in actual
                 or (actual[k] is not None and actual[k] != expected[k]))
    if not bad:
        return None
    more = len(bad) - 1
    more = f", and {more} more leaf" + ("s" if more > 1 else "") if more else ""
    return f"digest mismatch in {bad[0]}{more}"


def _model_difference(stored: dict, like: dict) -> str | None:
    """None if the stored leaves have the paths, shapes and dtypes of ``like``'s."""
    only_saved, only_like = sorted(set(stored) - set(like)), sorted(set(like) - set(stored))
    if only_saved or only_like:
        names = lambda paths: ", ".join(_leaf_name(p) for p in paths[:3])  # noqa: E731
        return (f"leaves only in the checkpoint: [{names(only_saved)}]; "
                f"leaves only in this model: [{names(only_like)}]")
    for path in sorted(stored):
        meta, leaf = stored[path], like[path]
        shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
        if shape is None or dtype is None:
            continue
        if tuple(shape) != tuple(np.shape(leaf)) or np.dtype(dtype) != np.dtype(leaf.dtype):
            return (f"{_leaf_name(path)} is {tuple(shape)} {np.dtype(dtype)} in the checkpoint, "
                    f"{tuple(np.shape(leaf))} {np.dtype(leaf.dtype)} in this model")
    return None


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _is_failed_read_noise(unraisable) -> bool:
    """What a failed orbax restore leaves behind, long after its error was raised: each abandoned
    array read's exception (a page of TensorStore spec each) and TensorStore callbacks into the
    closed event loop, reported as "unraisable" when collected."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and code.co_name == "_read_array_index_and_device_put":
        return True
    return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed")


def _silence_failed_read_noise() -> None:
    """After a failed restore (reported in one line), drop only that noise, for good."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_failed_read_noise", False):
        return

    def hook(unraisable):
        if not _is_failed_read_noise(unraisable):
            previous(unraisable)

    hook._drops_failed_read_noise = True
    sys.unraisablehook = hook


def _print(text: str) -> None:
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass
class _KeepLatestAndVerified:
    """Orbax preservation policy: the last ``n`` steps and the newest verified one."""

    n: int
    verified: int | None = None

    def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
        steps = [info.step for info in checkpoints]
        keep = set(sorted(steps)[-self.n:]) | {self.verified}
        return [step in keep for step in steps]


@contextlib.contextmanager
def _quiet_unless_verbose():
    """absl at ERROR inside, unless it runs below WARNING (``--verbosity``): orbax warns that a
    read-only manager will not save, which is what read-only asks for."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    if verbosity > absl_logging.WARNING:
        yield
        return
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


class Checkpointer:
    """``latest_step``, ``all_steps``, ``save(state)``, ``restore(like, step)`` (verified),
    ``resume(like, step)`` (verified, with fallback), ``close``. ``log`` gets one-line reports."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
                 log: Callable[[str], None] | None = None):
        self.directory = checkpoint_dir(workdir)
        self.read_only = read_only
        self._log = _print if log is None else log
        self._policy = _KeepLatestAndVerified(keep)
        # Handlers named up front: without them a fresh manager reads no item metadata.
        handlers = {STATE_ITEM: ocp.StandardCheckpointHandler(),
                    DIGEST_ITEM: ocp.JsonCheckpointHandler()}
        with _quiet_unless_verbose() if read_only else contextlib.nullcontext():
            options = ocp.CheckpointManagerOptions(
                create=not read_only, read_only=read_only,
                preservation_policy=None if read_only else self._policy,
            )
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=handlers
            )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def moved_aside(self, kind: str = "corrupt") -> list[str]:
        """Names of the step folders moved aside as ``kind`` (``corrupt`` or ``superseded``)."""
        if not os.path.isdir(self.directory):
            return []
        names = [n for n in os.listdir(self.directory)
                 if (m := _MOVED.match(n)) and m.group(2) == kind]
        return sorted(names, key=lambda n: (int(n.split(".")[0]), n))

    def save(self, state: TrainState) -> None:
        """Save at ``state.step`` with its digest (forced: the caller decides when) unless already
        saved: a step already saved holds this run's state (``resume`` moves later steps of
        another trajectory aside first), e.g. the final save right after a periodic one."""
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        digest = {"format": DIGEST_FORMAT, "algorithm": "sha256", "leaves": leaf_digests(state)}
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     DIGEST_ITEM: ocp.args.JsonSave(digest)})
        self._manager.save(step, args=args, force=True)

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """The verified state at ``step`` (default: latest) with the structure and sharding of
        ``like``. A damaged step raises :class:`CheckpointError` naming it; nothing is moved."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            return self._load(like, step)
        except _Damaged as err:
            others = [s for s in self.all_steps() if s != step]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is damaged ({err}); nothing was "
                f"changed; other saved steps: {others}"
            ) from None

    def resume(self, like: TrainState, step: int | None = None) -> TrainState | None:
        """The state to continue from: ``step`` exactly, or else the newest step that restores
        and verifies (moving damaged ones aside); None if there is no checkpoint at all."""
        if self.read_only:
            raise ValueError("resume needs a writable Checkpointer (read_only=False)")
        if step is not None:
            return self._resume_exactly(like, step)
        saved = self.all_steps()
        for i, candidate in enumerate(reversed(saved)):
            try:
                state = self._load(like, candidate)
            except _Damaged as err:
                name = self._move_aside(candidate, "corrupt")
                earlier = saved[-i - 2] if i + 1 < len(saved) else None
                then = "no earlier checkpoint" if earlier is None else f"trying step {earlier}"
                self._log(f"checkpoint step {candidate} is damaged ({err}): moved aside to "
                          f"{name}; {then}")
                continue
            self._policy.verified = candidate
            return state
        damaged = self.moved_aside("corrupt")
        if damaged:
            raise CheckpointError(
                f"no usable checkpoint in {self.directory}: every saved step is damaged and was "
                f"moved aside ({', '.join(damaged)}); not starting over them from step 0. To "
                f"start fresh, move the folder away (mv {self.directory} "
                f"{self.directory}.damaged) and run again"
            )
        return None

    def _resume_exactly(self, like: TrainState, step: int) -> TrainState:
        saved = self.all_steps()
        if step not in saved:
            raise CheckpointError(
                f"resume_step={step} has no checkpoint in {self.directory}; saved steps: {saved}"
            )
        try:
            state = self._load(like, step)
        except _Damaged as err:
            name = self._move_aside(step, "corrupt")
            raise CheckpointError(
                f"resume_step={step}: checkpoint step {step} is damaged ({err}) and was moved "
                f"aside to {name}; saved steps: {self.all_steps()}"
            ) from None
        later = [s for s in saved if s > step]
        for s in later:
            self._move_aside(s, "superseded")
        if later:
            self._log(f"resuming from step {step} as asked (resume_step): moved the later "
                      f"step{'s' if len(later) > 1 else ''} {', '.join(map(str, later))} aside "
                      "to <step>.superseded")
        self._policy.verified = step
        return state

    def _load(self, like: TrainState, step: int) -> TrainState:
        """Restore and verify ``step``; :class:`_Damaged` if it is unreadable or fails its digest,
        :class:`CheckpointError` if it is another model's (nothing is damaged then)."""
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(os.path.join(step_dir, STATE_ITEM)):
            empty = not os.listdir(step_dir)
            raise _Damaged("empty step folder" if empty else f"no {STATE_ITEM}/ in the step folder")
        try:
            metadata = self._manager.item_metadata(step)[STATE_ITEM]
        except Exception as err:  # noqa: BLE001 - whatever orbax raises, the step is unreadable
            raise _Damaged(f"unreadable metadata: {_first_line(err)}") from None
        if metadata is None or getattr(metadata, "tree", None) is None:
            raise CheckpointError(  # not evidence of damage: never move a step for it
                f"could not read the metadata of checkpoint step {step} in {self.directory}"
            )
        stored = ocp.tree.to_flat_dict(metadata.tree)
        difference = _model_difference(stored, ocp.tree.to_flat_dict(like))
        if difference:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match this model and "
                f"optimiser ({difference}): was the config changed? Nothing was moved"
            )
        has_digest = os.path.isdir(os.path.join(step_dir, DIGEST_ITEM))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract)}
        if has_digest:
            items[DIGEST_ITEM] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001 - a truncated file, a missing item, ...
            reason = f"restore failed: {_first_line(err)}"
        else:
            reason = None
        if reason is not None:
            _silence_failed_read_noise()
            raise _Damaged(reason)
        state = restored[STATE_ITEM]
        if not has_digest:
            self._log(f"checkpoint step {step} has no digest (saved by an older version): "
                      "restored without verification")
            return state
        problem = _digest_problem(restored[DIGEST_ITEM], state)
        if problem:
            raise _Damaged(problem)
        return state

    def _move_aside(self, step: int, kind: str) -> str:
        """Rename ``<step>`` to ``<step>.<kind>`` (``.1``, ``.2``, ... if taken); its name."""
        name, i = f"{step}.{kind}", 0
        while os.path.exists(os.path.join(self.directory, name)):
            i += 1
            name = f"{step}.{kind}.{i}"
        _sync(f"checkpoint_move_{step}_{kind}")  # every process named it before the rename
        if jax.process_index() == 0:
            os.rename(os.path.join(self.directory, str(step)), os.path.join(self.directory, name))
        _sync(f"checkpoint_moved_{step}_{kind}")
        self._manager.reload()
        return name

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
