"""Timing of a compiled train step, shared by scripts/bench_train*.py (not a script itself).

``time_train_step`` times ``training.step.make_train_step``'s program the way the training loop
runs it: one call per block of updates, a host read of the loss after each call (the loop's one
sync per call). ``one_update_flops`` is XLA's FLOP count of one update.
"""

from __future__ import annotations

import time

import jax


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
