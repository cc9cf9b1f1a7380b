"""Host batches to global device arrays sharded over the mesh axis ``'data'``, read ahead.

Each process holds its own slice of the global batch (images.py shards records by process);
``to_global`` assembles the slices of all processes into one ``jax.Array`` whose example axis is
split over the mesh axis, with ``jax.make_array_from_process_local_data`` (on one process: a
sharded ``device_put``). ``DevicePrefetcher`` keeps the next few batches already in flight to the
devices and still reports the iterator state of the next batch it will *yield*, so a checkpoint
taken mid-stream resumes exactly. ``StepBatches`` serves the training loop: the block of batches
for updates ``n + 1 ... n + k`` read by random access (``dataset[n] ... dataset[n + k - 1]``), so
the data position is the step number already in the checkpoint; the next block is read in the
background while the devices work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DEVICE_KEYS = ("image", "label")  # what the model needs; 'index' stays on the host


def to_global(local, mesh: Mesh, axis: str = "data", example_axis: int = 0):
    """A pytree of process-local numpy arrays -> global arrays sharded along ``example_axis``.

    ``example_axis = 1`` places a block of batches ``(steps, batch, ...)`` as ``P(None, 'data')``.
    Dict batches keep only ``DEVICE_KEYS``.
    """
    if isinstance(local, dict):
        local = {k: v for k, v in local.items() if k in DEVICE_KEYS}
    sharding = NamedSharding(mesh, P(*(None,) * example_axis, axis))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )


def stack_block(iterator: Iterator, length: int):
    """The next ``length`` batches stacked on a new leading axis: ``(length, batch, ...)``."""
    batches = [next(iterator) for _ in range(length)]
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


class DevicePrefetcher:
    """Iterates ``to_global(next(iterator))`` with ``size`` batches already sent to the devices.

    ``get_state()`` is the wrapped iterator's state *before* the next batch this object will
    return (read-ahead excluded); ``set_state`` drops the read-ahead and seeks the iterator.
    ``block > 0`` yields blocks of ``block`` stacked batches sharded ``P(None, 'data')`` (the
    train step's ``lax.scan`` over updates).
    """

    def __init__(
        self, iterator, mesh: Mesh, size: int = 2, block: int = 0, axis: str = "data"
    ):
        if size < 1:
            raise ValueError(f"prefetch size={size!r} must be >= 1")
        self._iterator = iterator
        self._mesh = mesh
        self._size = size
        self._block = block
        self._axis = axis
        self._queue: collections.deque = collections.deque()

    def _enqueue(self) -> None:
        state = copy.deepcopy(self._iterator.get_state())
        if self._block:
            host = stack_block(self._iterator, self._block)
            placed = to_global(host, self._mesh, self._axis, example_axis=1)
        else:
            placed = to_global(next(self._iterator), self._mesh, self._axis)
        self._queue.append((state, placed))  # device_put is asynchronous: this returns at once

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) < self._size:
            try:
                self._enqueue()
            except StopIteration:
                break
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()[1]

    def get_state(self):
        return self._queue[0][0] if self._queue else self._iterator.get_state()

    def set_state(self, state) -> None:
        self._queue.clear()
        self._iterator.set_state(state)


class StepBatches:
    """``batches(first_step, length)``: the device block of updates ``first_step + 1 ...``.

    Update ``n`` (1-based) trains on ``dataset[n - 1]``, whatever happened before: a resumed run
    sees exactly the batches an uninterrupted one would. Returns the images only (an array
    ``(length, batch, H, W, C)`` sharded ``P(None, 'data')``), or with ``with_labels`` the dict
    ``{'image', 'label'}``. After each call the following block (same length) is read ahead by
    ``num_threads`` threads; a call for any other block reads it on the spot.
    """

    def __init__(self, dataset, mesh: Mesh, with_labels: bool = False, num_threads: int = 4,
                 axis: str = "data"):
        self._dataset = dataset
        self._mesh = mesh
        self._with_labels = with_labels
        self._axis = axis
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)  # reads batches
        self._reader = concurrent.futures.ThreadPoolExecutor(1)  # reads the next block
        self._ahead: tuple[tuple[int, int], concurrent.futures.Future] | None = None

    def read_block(self, first_step: int, length: int):
        """The host block for updates ``first_step + 1 ... first_step + length`` (numpy)."""
        batches = list(self._pool.map(self._dataset.__getitem__,
                                      range(first_step, first_step + length)))
        block = jax.tree.map(lambda *xs: np.stack(xs), *batches)
        return block if self._with_labels else block["image"]

    def __call__(self, first_step: int, length: int):
        first_step, length = int(first_step), int(length)
        if self._ahead is not None and self._ahead[0] == (first_step, length):
            block = self._ahead[1].result()
        else:
            block = self.read_block(first_step, length)
        placed = to_global(block, self._mesh, self._axis, example_axis=1)
        self._ahead = ((first_step + length, length), self._reader.submit(
            self.read_block, first_step + length, length))
        return placed

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
