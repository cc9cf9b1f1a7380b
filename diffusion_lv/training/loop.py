"""The training loop: resume, compiled blocks of updates, logs, checkpoints, faults.

* Resume: if ``<workdir>/checkpoints`` holds a checkpoint the run continues from the latest one
  that restores and verifies (damaged steps are moved aside and reported: training/checkpoint.py),
  or from exactly ``TrainConfig.resume_step`` (later steps are moved aside); since every random
  draw is a function of (base key, step), the result is bit-for-bit the same as a run that never
  stopped. Calls are aligned to multiples of ``steps_per_call`` so a resumed
  run executes the same compiled blocks as an uninterrupted one.
* One host sync per call of ``steps_per_call`` updates (the metrics); events (log, checkpoint,
  samples) fire at the first call boundary at or after each multiple of their interval.
* SIGTERM / SIGINT (preemption, Ctrl-C) finish the current call, save and return; a second
  SIGINT interrupts at once. A SIGKILL during a save leaves the previous checkpoint intact.
* A non-finite loss or gradient raises :class:`NonFiniteError` naming the step and the quantity;
  the state is frozen at the last finite update and nothing is saved after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np

from diffusion_lv import checks, losses, progress
from diffusion_lv.models import param_count
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.training import checkpoint
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib
from diffusion_lv.training.state import OptimizerConfig, TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings; intervals are in updates (0 disables checkpoints or samples during
    training; a run always ends with a checkpoint). ``ema_decays`` and ``bucket_edges`` are
    stored as tuples of floats, ``unroll_steps`` as a bool."""

    batch_size: int = 512
    num_steps: int = 4000
    steps_per_call: int = 100
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0
    ema_decays: tuple[float, ...] = (0.999,)
    ema_rampup: float = 0.05  # half-life cap as a fraction of the updates made (EDM); 0: off
    seed: int = 0
    bucket_edges: tuple[float, ...] = (0.1, 1.0, 10.0)
    unroll_steps: bool = False  # unroll each call's updates (convolutions on XLA:CPU)
    resume_step: int | None = None  # resume from exactly this saved step (None: the latest good)

    def __post_init__(self):
        checks.number("batch_size", self.batch_size, lo=1, integer=True)
        decays = self.ema_decays
        if not (isinstance(decays, tuple | list) and decays and all(
            _is_number(d) and 0.0 <= d < 1.0 for d in decays
        )):
            raise ValueError(
                f"ema_decays={decays!r} is not valid; valid: a non-empty tuple of numbers in [0, 1)"
            )
        edges = self.bucket_edges
        if not (isinstance(edges, tuple | list) and all(_is_number(e) and e > 0 for e in edges)
                and list(edges) == sorted(set(edges))):
            raise ValueError(
                f"bucket_edges={edges!r} is not valid; valid: strictly increasing positive noise "
                "levels sigma_ve"
            )
        checks.number("ema_rampup", self.ema_rampup, lo=0.0)
        checks.number("num_steps", self.num_steps, lo=1, integer=True)
        checks.number("steps_per_call", self.steps_per_call, lo=1, integer=True)
        checks.number("log_every", self.log_every, lo=1, integer=True)
        checks.number("checkpoint_every", self.checkpoint_every, lo=0, integer=True)
        checks.number("keep_checkpoints", self.keep_checkpoints, lo=1, integer=True)
        checks.number("sample_every", self.sample_every, lo=0, integer=True)
        checks.number("seed", self.seed, integer=True)
        checks.number("resume_step", self.resume_step, lo=0, integer=True, optional=True)
        # Normalised as the config parser always did: equal settings compare (and cache) equal.
        object.__setattr__(self, "ema_decays", tuple(float(d) for d in decays))
        object.__setattr__(self, "bucket_edges", tuple(float(e) for e in edges))
        object.__setattr__(self, "unroll_steps", bool(self.unroll_steps))


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_batch_divisible(batch_size: int, num_devices: int) -> None:
    """A global batch must split evenly over the data-parallel devices."""
    if batch_size % num_devices:
        raise ValueError(
            f"batch_size={batch_size!r} is not divisible by the number of devices "
            f"({num_devices}); valid: a multiple of {num_devices}"
        )


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm; ``step`` is the update that produced it."""

    def __init__(self, message: str, step: int, quantity: str):
        super().__init__(message)
        self.step = step
        self.quantity = quantity


class TrainResult(NamedTuple):
    state: TrainState
    stopped_by: str | None  # signal name if stopped early, else None


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


@contextlib.contextmanager
def _stop_on_signals(flag: dict):
    """Turn SIGTERM/SIGINT into a request to stop (second SIGINT: KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if flag.get("signal") == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        flag["signal"] = name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_finite(metrics: dict) -> None:
    finite = np.asarray(metrics["finite"])
    if finite.all():
        return
    i = int(np.argmin(finite))
    step = int(metrics["step"][i])
    loss, grad_norm = float(metrics["loss"][i]), float(metrics["grad_norm"][i])
    quantity, value = ("loss", loss) if not np.isfinite(loss) else ("gradient norm", grad_norm)
    raise NonFiniteError(
        f"non-finite {quantity} ({value}) at step {step}: training stopped; the state keeps "
        f"step {step - 1} and no checkpoint was written after it",
        step,
        quantity,
    )


class _Window:
    """Metrics accumulated between two log events."""

    def __init__(self, num_buckets: int):
        self.num_buckets = num_buckets
        self.reset()

    def reset(self):
        self.loss, self.grad_norm, self.count = 0.0, 0.0, 0
        self.bucket_sum = np.zeros(self.num_buckets)
        self.bucket_count = np.zeros(self.num_buckets)

    def add(self, metrics: dict):
        self.loss += float(np.sum(metrics["loss"]))
        self.grad_norm += float(np.sum(metrics["grad_norm"]))
        self.count += len(metrics["loss"])
        self.bucket_sum += np.sum(metrics["bucket_sum"], axis=0)
        self.bucket_count += np.sum(metrics["bucket_count"], axis=0)

    def summary(self, names: Sequence[str]) -> dict[str, float]:
        out = {"train/loss": self.loss / self.count, "train/grad_norm": self.grad_norm / self.count}
        for name, total, n in zip(names, self.bucket_sum, self.bucket_count, strict=True):
            if n > 0:
                out[f"train/loss_{name}"] = total / n
        return out


@functools.lru_cache(maxsize=8)
def _train_step(
    network, model, loss_config, optimizer_config, decays, devices, edges, unroll=False,
    ema_rampup=0.0,
):
    """The compiled step, shared by ``train`` calls with equal settings (resume in one process)."""
    return step_lib.make_train_step(
        network.apply,
        model,
        loss_config,
        state_lib.make_optimizer(optimizer_config),
        decays,
        step_lib.make_mesh(devices),
        edges,
        unroll,
        ema_rampup,
    )


def train(
    workdir: str,
    network: nn.Module,
    model: Parameterization,
    loss_config: losses.LossConfig,
    optimizer_config: OptimizerConfig,
    config: TrainConfig,
    dataset_fn: Callable[[Array, int], Array],
    data_shape: tuple[int, ...],
    *,
    mesh=None,
    on_sample: Callable[[TrainState, progress.TensorBoard], None] | None = None,
    after_call: Callable[[TrainState], None] | None = None,
    console: bool = True,
    make_batches: Callable | None = None,
) -> TrainResult:
    """Train (or resume training) until ``config.num_steps`` updates; return the final state.

    ``network(net_input, c_noise)`` is the Flax module trained; ``model`` says how its output is
    read (schedule, prediction, sigma_data); ``loss_config`` weights and samples the loss.
    ``on_sample(state, tensorboard)`` is called every ``sample_every`` updates;
    ``after_call(state)`` after every compiled call (tests use it to send signals).
    ``make_batches(mesh, global_batch, seed) -> batches(first_step, length)`` replaces the
    on-device ``dataset_fn`` by another data source indexed by step (the image pipeline).
    """
    mesh = step_lib.make_mesh() if mesh is None else mesh
    num_devices = mesh.devices.size
    check_batch_divisible(config.batch_size, num_devices)
    optimizer = state_lib.make_optimizer(optimizer_config)
    lr_schedule = state_lib.learning_rate_schedule(optimizer_config)
    fresh = state_lib.create_train_state(
        network, optimizer, config.seed, data_shape, len(config.ema_decays)
    )
    state = jax.device_put(fresh, step_lib.replicated(mesh))

    display = progress.ProgressLine(config.num_steps, enabled=console)
    checkpoints = checkpoint.Checkpointer(
        workdir, keep=config.keep_checkpoints, log=display.message
    )
    try:  # the newest step that verifies (damaged ones moved aside), or exactly resume_step
        restored = checkpoints.resume(state, config.resume_step)
    except BaseException:
        checkpoints.close()
        raise
    if restored is not None:
        state = restored
        display.message(f"resumed from checkpoint at step {int(state.step)}")
    else:
        display.message(
            f"training from scratch: {param_count(state.params):,} params, "
            f"{num_devices} device(s), global batch {config.batch_size}"
        )

    train_steps = _train_step(
        network,
        model,
        loss_config,
        optimizer_config,
        config.ema_decays,
        tuple(mesh.devices.flat),
        config.bucket_edges,
        config.unroll_steps,
        config.ema_rampup,
    )
    if make_batches is not None:
        batches = make_batches(mesh, config.batch_size, config.seed)
    else:
        data_key = state_lib.stream_key(jax.device_get(state.key), state_lib.DATA_STREAM)
        batches = step_lib.make_batch_fn(dataset_fn, data_key, config.batch_size, mesh)
    tensorboard = progress.TensorBoard(workdir)
    names = step_lib.bucket_names(config.bucket_edges)
    window = _Window(len(names))
    rate = progress.RateMeter()
    stop: dict = {}
    step = int(state.step)
    compile_start = time.perf_counter()
    try:
        with _stop_on_signals(stop):
            while step < config.num_steps and "signal" not in stop:
                k = config.steps_per_call
                length = min(k - step % k, config.num_steps - step)
                state, metrics = train_steps(state, batches(step, length))
                metrics = jax.device_get(metrics)
                _check_finite(metrics)
                before, step = step, int(metrics["step"][-1])
                window.add(metrics)
                if not rate.started:
                    display.message(
                        f"first call (compile + {length} updates): "
                        f"{time.perf_counter() - compile_start:.1f} s"
                    )
                    rate.start(step)
                if _crossed(before, step, config.log_every) or step == config.num_steps:
                    summary = window.summary(names)
                    steps_per_sec = rate.rate(step)
                    summary["train/learning_rate"] = float(lr_schedule(step))
                    if np.isfinite(steps_per_sec):
                        summary["train/steps_per_sec"] = steps_per_sec
                    tensorboard.scalars(step, summary)
                    display.update(
                        step, summary["train/loss"], summary["train/grad_norm"], steps_per_sec
                    )
                    window.reset()
                if _crossed(before, step, config.checkpoint_every):
                    checkpoints.save(state)
                if on_sample is not None and _crossed(before, step, config.sample_every):
                    on_sample(state, tensorboard)
                if after_call is not None:
                    after_call(state)
        checkpoints.save(state)
        if "signal" in stop:
            again = ("run the same command again to resume" if config.resume_step is None
                     else "run again without training.resume_step to resume from it")
            display.message(
                f"stopped by {stop['signal']} at step {step}: checkpoint saved; {again}"
            )
        else:
            display.message(f"done: {step} steps, checkpoint saved")
            for note in state_lib.ema_notes(config.ema_decays, config.ema_rampup, step):
                display.message(note)
    finally:
        checkpoints.close()
        tensorboard.close()
    return TrainResult(state, stop.get("signal"))
