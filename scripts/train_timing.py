"""Timing of a compiled train step, shared by the benchmark scripts (not a script itself).

``time_train_step`` times ``training.step.make_train_step``'s program the way the training loop
runs it: one call per block of updates, a host read of the loss after each call (the loop's one
sync per call). ``one_update_flops`` is XLA's FLOP count of one update.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib


def time_train_step(fn, state, batches, steps_per_call: int, seconds: float,
                    details: dict | None = None):
    """``(state, compile_s, steps_per_sec)`` of ``fn`` over at least ``seconds`` (and one call).

    ``batches(first_step, length)`` gives a block of ``length`` updates' batches. ``details``, if
    given, receives ``compiled`` (the program timed, for its cost and memory analyses) and
    ``first_metrics`` (those of the first call, from ``state`` on the first block).
    """
    block = batches(0, steps_per_call)
    start = time.perf_counter()
    compiled = fn.lower(state, block).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = compiled(state, block)  # warm-up
    jax.block_until_ready(metrics)
    if details is not None:
        details.update(compiled=compiled, first_metrics=jax.device_get(metrics))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps == 0:
        state, metrics = compiled(state, batches(steps + steps_per_call, steps_per_call))
        jax.device_get(metrics["loss"])  # the loop's one host sync per call
        steps += steps_per_call
    return state, compile_seconds, steps / (time.perf_counter() - start)


def one_update_flops(fn, state, one_update_block) -> float:
    """XLA's FLOPs of one update (NaN if not reported).

    XLA counts a loop body once, so this compiles a one-update program.
    """
    return compiled_flops(fn.lower(state, one_update_block).compile())


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (NaN if the backend reports none)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    return float((analysis or {}).get("flops", float("nan")))


def best_time(fn, *args, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` warm calls of ``fn(*args)`` (the first call compiles
    and is not counted; the fastest, as the machine may be shared)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def synthetic_images(shape):
    """``dataset_fn(key, n)``: uniform pixels in [-1, 1] of the data's shape, made on device."""
    return lambda key, n: jax.random.uniform(key, (n, *shape), jnp.float32, -1.0, 1.0)


def time_step(experiment, batch: int, devices, optimizer=None, seconds: float = 1.0,
              seed: int = 0) -> dict:
    """The training loop's compiled step (one update per call) on ``devices``."""
    mesh = step_lib.make_mesh(devices)
    optimizer = optimizer or state_lib.make_optimizer(experiment.optimizer)
    unroll = jax.default_backend() == "cpu"  # XLA:CPU runs convolution gradients in loops slowly
    fn = step_lib.make_train_step(
        experiment.network.apply, experiment.parameterization, experiment.loss, optimizer,
        experiment.training.ema_decays, mesh, experiment.training.bucket_edges, unroll,
        experiment.training.ema_rampup,
    )
    state = state_lib.create_train_state(experiment.network, optimizer, seed,
                                         experiment.data_shape,
                                         len(experiment.training.ema_decays))
    state = jax.device_put(state, step_lib.replicated(mesh))
    batches = step_lib.make_batch_fn(synthetic_images(experiment.data_shape),
                                     jax.random.PRNGKey(1), batch, mesh)
    details = {}
    state, compile_s, steps_per_sec = time_train_step(fn, state, batches, 1, seconds, details)
    return {"state": state, "compile_s": compile_s, "images_per_sec": steps_per_sec * batch,
            "flops": compiled_flops(details["compiled"]), "compiled": details["compiled"]}
