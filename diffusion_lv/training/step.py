"""The data-parallel train step: written per device, run under ``jax.shard_map``.

Each device holds a replica of the train state and a shard of the global batch along the mesh
axis ``'data'``; it computes the gradient of its shard's mean loss, and ``lax.pmean(grads,
'data')`` makes it the gradient of the global mean. ``check_vma=False`` is required: with the
default, replicated params make ``jax.grad`` already sum over devices and the ``pmean`` leaves
that sum (gradients scaled by the device count).

Randomness does not depend on the device count: example ``i`` of the global batch at step ``n``
draws its time and noise from ``fold_in(fold_in(noise_key, n), i)``, so 1 and 8 devices compute
the same update on the same global batch (up to float summation order).

One compiled call runs ``steps_per_call`` updates with ``lax.scan`` over a block of batches of
shape ``(steps_per_call, global_batch, *data_shape)``, sharded ``P(None, 'data')``. A non-finite
loss or gradient freezes the state at the last finite update (the remaining updates of the block
are skipped); the host reads the per-update metrics and raises (see loop.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_lv import losses
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.training.state import (
    DROPOUT_STREAM,
    NOISE_STREAM,
    TrainState,
    stream_key,
    update_ema,
)

Array = jax.Array
AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh ``('data',)`` over ``devices`` (all devices by default)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a block of batches ``(steps, global_batch, ...)``: examples over 'data'."""
    return NamedSharding(mesh, P(None, AXIS))


def global_norm(tree) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def bucket_index(sigma_ve: Array, edges: Sequence[float]) -> Array:
    """Noise-level bucket of each ``sigma_ve``: 0 below ``edges[0]``, ..., ``len(edges)`` above."""
    return jnp.searchsorted(jnp.asarray(edges, sigma_ve.dtype), sigma_ve, side="right")


def bucket_names(edges: Sequence[float]) -> list[str]:
    bounds = ["0", *(f"{e:g}" for e in edges), "inf"]
    return [f"sigma_{lo}_{hi}" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def per_example_loss(
    model_fn: Callable[[Array, Array], Array],
    x0: Array,
    keys: Array,
    model: Parameterization,
    config: losses.LossConfig,
) -> tuple[Array, Array]:
    """``losses.diffusion_loss`` with one key per example, the model called once on the batch.

    Example ``i`` draws its time and noise from ``keys[i]`` exactly as ``diffusion_loss(model_fn,
    x0[i:i+1], keys[i], ...)`` does (tested equal), so the draws do not depend on how the batch
    is split over devices; calling the network on the whole batch (not vmapped per example)
    keeps its gradient one matmul per layer (4x faster for the toy MLP on CPU).
    """

    def draws(x, key):
        t, eps = losses.draw_times_and_noise(key, x[None], model, config)
        return t[0], eps[0]

    t, eps = jax.vmap(draws)(x0, keys)
    return losses.loss_at(model_fn, x0, t, eps, model, config), t


def make_train_step(
    apply_fn: Callable,
    model: Parameterization,
    loss_config: losses.LossConfig,
    optimizer: optax.GradientTransformation,
    ema_decays: Sequence[float],
    mesh: Mesh,
    bucket_edges: Sequence[float] = (0.1, 1.0, 10.0),
    unroll: bool = False,
    ema_rampup: float = 0.0,
) -> Callable[[TrainState, Array], tuple[TrainState, dict]]:
    """``train_steps(state, batches) -> (state, metrics)``, jit-compiled, state donated.

    ``apply_fn(params, net_input, c_noise)`` is the network; ``model`` says how its output is
    read (schedule, prediction, sigma_data) and ``loss_config`` weights and samples the loss.

    ``metrics`` has one entry per update of the block: ``step`` (the update's number, 1-based),
    ``loss``, ``grad_norm`` (before clipping), ``finite`` and per-bucket ``bucket_sum`` /
    ``bucket_count`` of the per-example loss by noise level (``bucket_edges`` in ``sigma_ve``).
    Networks that take a ``'dropout'`` PRNG stream (the U-Net) get one per device and update
    (so dropout masks, unlike the loss's draws, depend on the device layout).
    ``unroll=True`` unrolls the block of updates: XLA:CPU runs convolution gradients inside a
    loop about 100x slower than outside one (measured), so image models on CPU need it.
    ``ema_rampup`` caps each EMA's half-life at that fraction of the updates made
    (``state.ema_decay_at``; 0: constant decays).
    """
    ema_decays = tuple(float(d) for d in ema_decays)
    num_buckets = len(bucket_edges) + 1

    def batch_loss(params, x0, keys, dropout_key):
        # Its own stream, so the loss's draws are the same with or without dropout.
        rngs = {"dropout": dropout_key}
        model_fn = model.model_fn(
            lambda net_input, c_noise: apply_fn(params, net_input, c_noise, rngs=rngs)
        )
        per_example, t = per_example_loss(model_fn, x0, keys, model, loss_config)
        return jnp.mean(per_example), (per_example, t)

    def one_update(state: TrainState, x0: Array):
        local = x0.shape[0]
        step_key = jax.random.fold_in(stream_key(state.key, NOISE_STREAM), state.step)
        first = lax.axis_index(AXIS) * local
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(local))
        dropout_key = jax.random.fold_in(
            jax.random.fold_in(stream_key(state.key, DROPOUT_STREAM), state.step),
            lax.axis_index(AXIS),
        )

        (loss, (per_example, t)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
            state.params, x0, keys, dropout_key
        )
        loss = lax.pmean(loss, AXIS)
        grads = lax.pmean(grads, AXIS)
        grad_norm = global_norm(grads)

        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        updated = TrainState(
            step=state.step + 1,
            params=params,
            ema_params=update_ema(
                state.ema_params, params, ema_decays, state.step + 1, ema_rampup
            ),
            opt_state=opt_state,
            key=state.key,
        )
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Never let a non-finite update into the state: the host stops the run on `finite`.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)

        sigma_ve = model.schedule.sigma_ve(t)
        onehot = jax.nn.one_hot(bucket_index(sigma_ve, bucket_edges), num_buckets)
        metrics = {
            "step": state.step + 1,
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,
            "bucket_sum": lax.psum(per_example @ onehot, AXIS),
            "bucket_count": lax.psum(jnp.sum(onehot, axis=0), AXIS),
        }
        return new_state, metrics

    def per_device(state: TrainState, batches: Array):
        if unroll and batches.shape[0] == 1:
            # scan(unroll=True) of length 1 keeps its while loop: 30x slower on XLA:CPU (measured).
            state, metrics = one_update(state, batches[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        return lax.scan(one_update, state, batches, unroll=unroll)

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(None, AXIS)),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return jax.jit(sharded, donate_argnums=(0,))


def make_batch_fn(
    dataset_fn: Callable[[Array, int], Array],
    key: Array,
    global_batch: int,
    mesh: Mesh,
) -> Callable[[int, int], Array]:
    """``batches(first_step, length)``: the block of batches for updates ``first_step + 1, ...``.

    The batch of update ``n`` is ``dataset_fn(fold_in(key, n), global_batch)``: a function of the
    step alone, so resuming replays the same data. Generated on device, placed sharded.
    """
    generate = _batch_generator(dataset_fn, global_batch, _mesh_key(mesh))
    return lambda first_step, length: generate(key, jnp.asarray(first_step, jnp.int32), length)


def _mesh_key(mesh: Mesh) -> tuple:
    return tuple(mesh.devices.flat), mesh.axis_names


@functools.lru_cache(maxsize=16)
def _batch_generator(dataset_fn, global_batch: int, mesh_key: tuple):
    mesh = make_mesh(mesh_key[0])

    @functools.partial(jax.jit, static_argnums=2)
    def generate(key, first_step, length):
        steps = first_step + 1 + jnp.arange(length)
        block = jax.vmap(lambda n: dataset_fn(jax.random.fold_in(key, n), global_batch))(steps)
        return lax.with_sharding_constraint(block, batch_sharding(mesh))

    return generate
