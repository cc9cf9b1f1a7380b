"""The train state and the optimiser: everything a run needs to continue bit-for-bit.

``TrainState`` holds the step (number of completed updates), the params, one EMA copy of the params
per decay, the optimiser state and the run's *base* PRNG key. Randomness is never carried forward:
step ``n`` uses ``fold_in(key, n)``, so a state restored at any step replays the same future.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffusion_lv import checks

Array = jax.Array

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_DECAYS = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """optax optimiser: linear warm-up to ``learning_rate``, then constant or cosine decay.

    ``grad_clip`` is the global-norm clipping threshold (0 disables it); ``weight_decay`` is used
    by ``adamw`` only; ``decay_steps`` is the length of the cosine decay (after warm-up).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    decay: str = "constant"
    decay_steps: int = 1
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0

    def __post_init__(self):
        checks.choice("name", self.name, OPTIMIZERS)
        checks.choice("decay", self.decay, LR_DECAYS)
        checks.number("warmup_steps", self.warmup_steps, lo=0, integer=True)
        checks.number("decay_steps", self.decay_steps, lo=1, integer=True)
        checks.number("learning_rate", self.learning_rate, lo=0.0, lo_open=True)
        checks.number("final_lr_fraction", self.final_lr_fraction, lo=0.0, hi=1.0)
        checks.number("weight_decay", self.weight_decay, lo=0.0)
        checks.number("b1", self.b1, lo=0.0, hi=1.0, hi_open=True)
        checks.number("b2", self.b2, lo=0.0, hi=1.0, hi_open=True)
        checks.number("eps", self.eps, lo=0.0)
        checks.number("grad_clip", self.grad_clip, lo=0.0)


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    if config.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if config.warmup_steps else config.learning_rate,
            peak_value=config.learning_rate,
            warmup_steps=config.warmup_steps,
            decay_steps=config.warmup_steps + max(config.decay_steps, 1),
            end_value=config.final_lr_fraction * config.learning_rate,
        )
    if config.warmup_steps:
        return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.constant_schedule(config.learning_rate)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    lr = learning_rate_schedule(config)
    if config.name == "sgd":
        opt = optax.sgd(lr)
    elif config.name == "adam":
        opt = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
    else:
        opt = optax.adamw(
            lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)
    return opt


@struct.dataclass
class TrainState:
    step: Array  # int32 scalar: completed updates
    params: dict
    ema_params: tuple  # one params tree per EMA decay, in the order of the decays
    opt_state: optax.OptState
    key: Array  # the run's base key (uint32[2]); step n uses fold_in(key, n)


def init_params(network: nn.Module, key: Array, data_shape: tuple[int, ...]) -> dict:
    """Initialise ``network(net_input, c_noise)`` on a dummy batch of one example."""
    x = jnp.zeros((1, *data_shape), jnp.float32)
    # One compiled program: eager init dispatches every initializer op by op (a U-Net's
    # hundreds of parameters took minutes on a loaded 2-core CPU).
    return jax.jit(network.init)(key, x, jnp.zeros((1,), jnp.float32))


def create_train_state(
    network: nn.Module,
    optimizer: optax.GradientTransformation,
    seed: int,
    data_shape: tuple[int, ...],
    num_ema: int,
) -> TrainState:
    key = jax.random.PRNGKey(seed)
    params = init_params(network, jax.random.fold_in(key, INIT_STREAM), data_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        # Distinct buffers: the state is donated to the train step, leaf by leaf.
        ema_params=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_ema)),
        opt_state=optimizer.init(params),
        key=key,
    )


def half_life(decay: float) -> float:
    """Updates after which an EMA of this decay weighs a past value by one half."""
    return math.log(0.5) / math.log(decay) if decay > 0 else 0.0


def ema_decay_at(decay: float, step, rampup: float):
    """The decay used for update number ``step`` (1-based): EDM's ramp-up caps the half-life at
    ``rampup * step`` updates, so an EMA is never mostly its initial (random) value however short
    the run; ``rampup=0`` keeps the constant ``decay``. Past ``half_life(decay) / rampup``
    updates the cap no longer binds."""
    if rampup <= 0 or decay <= 0:
        return decay
    capped = jnp.exp2(-1.0 / jnp.maximum(rampup * step, 1e-8))
    return jnp.minimum(decay, capped)


def update_ema(ema_params: tuple, params, decays: tuple[float, ...], step=None,
               rampup: float = 0.0) -> tuple:
    """One EMA update per decay; ``step`` is the number of the update just made."""
    effective = [decay if step is None else ema_decay_at(decay, step, rampup)
                 for decay in decays]
    return tuple(
        jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, ema, params)
        for ema, d in zip(ema_params, effective, strict=True)
    )


def ema_notes(decays: tuple[float, ...], rampup: float, steps: int) -> list[str]:
    """A line for each EMA that has averaged fewer updates than its horizon: with the ramp-up,
    what it capped the half-life to; without it, how much of the EMA is still the initial
    parameters."""
    notes = []
    for decay in decays:
        horizon = half_life(decay)
        if rampup > 0 and rampup * steps < horizon:
            notes.append(
                f"EMA {decay:g} (half-life {horizon:.0f} updates) averaged {steps} updates: its "
                f"ramp-up capped the half-life at {rampup * steps:.3g} (ema_rampup={rampup:g})"
            )
        elif rampup <= 0 and decay**steps > 0.01:
            notes.append(
                f"EMA {decay:g} (half-life {horizon:.0f} updates) averaged only {steps} updates: "
                f"{100 * decay**steps:.0f}% of it is still the initial parameters "
                "(set training.ema_rampup, e.g. 0.05, or use eval.params=raw)"
            )
    return notes


# Independent random streams derived from the base key.
INIT_STREAM, DATA_STREAM, NOISE_STREAM, SAMPLE_STREAM, DROPOUT_STREAM = 0, 1, 2, 3, 4


def stream_key(key: Array, stream: int) -> Array:
    return jax.random.fold_in(key, stream)
