"""Checkpoints of the train state: orbax ``CheckpointManager`` in ``<workdir>/checkpoints``.

Saves are atomic (orbax writes a temporary folder and renames it when complete), so a process
killed mid-save leaves the previous checkpoint as the latest one; the unfinished temporary folder
is ignored on restore. The last ``keep`` checkpoints are kept. Restoring goes against an abstract
target built from a freshly initialised state, so the optimiser state comes back with its
structure (not as plain lists) and the arrays land with the given sharding.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from diffusion_lv.training.state import TrainState


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    """A thin wrapper: ``latest_step``, ``save(state)``, ``restore(like)``, ``close``."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only
        )
        self.directory = checkpoint_dir(workdir)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState) -> None:
        """Save at ``state.step`` (forced: the caller decides when) unless already saved."""
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """The state at ``step`` (default: latest) with the structure and sharding of ``like``."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
