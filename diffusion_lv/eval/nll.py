"""Held-out NLL of a trained network in padded batches: the probability-flow likelihood and the
reverse-SDE model's variational bound (likelihood_bound.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import progress
from diffusion_lv.likelihood import LikelihoodConfig, evaluate_likelihood, make_likelihood_fn
from diffusion_lv.likelihood_bound import BoundConfig, evaluate_bound, make_bound_fn
from diffusion_lv.parameterization import Parameterization

Array = jax.Array


def evaluate_nll(
    apply_fn: Callable,
    params,
    model: Parameterization,
    examples: np.ndarray,
    config: LikelihoodConfig,
    batch_size: int,
    key: Array,
    show_progress: bool = True,
) -> dict:
    """Probability-flow NLL of ``examples`` (held-out data) in batches of ``batch_size``.

    One compilation serves every batch: the last one is padded with copies of its first example
    and the padding is dropped from the figures. Returns ``likelihood.evaluate_likelihood``'s
    means and standard errors (nats and bits/dim, dequantised when ``config.num_levels`` is
    set), the mean NFE per solve and the number of examples; NaN figures when no solve finished.
    """
    examples = np.asarray(examples, np.float32)
    n = examples.shape[0]
    batch_size = min(batch_size, n)
    fn = make_likelihood_fn(model.model_apply(apply_fn), model, config)
    num_batches = -(-n // batch_size)

    def trimmed(params_, batch, key_):  # the padded rows leave the result here
        x, valid = batch
        result = fn(params_, x, key_)
        return result._replace(
            nll=result.nll[:valid], bits_per_dim=result.bits_per_dim[:valid]
        )

    items = progress.track(padded_batches(examples, batch_size), num_batches,
                           f"NLL ({n} examples)", enabled=show_progress and num_batches > 1)
    try:
        figures = evaluate_likelihood(trimmed, params, items, key)
    except ValueError:  # no batch solved within max_steps
        nan = float("nan")
        figures = {"nll": nan, "nll_standard_error": nan, "bits_per_dim": nan,
                   "bits_per_dim_standard_error": nan, "nfe": nan, "num_examples": 0,
                   "unsolved_batches": num_batches}
    return figures


def padded_batches(examples: np.ndarray, batch_size: int):
    """``(batch, valid)`` pairs of equal shape (one compilation serves all): the last batch is
    padded with copies of its first example, ``valid`` counts the real ones."""
    for i in range(-(-examples.shape[0] // batch_size)):
        batch = examples[i * batch_size:(i + 1) * batch_size]
        pad = batch_size - batch.shape[0]
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[:1], pad, axis=0)])
        yield jnp.asarray(batch), batch_size - pad


def evaluate_nll_bound(
    apply_fn: Callable,
    params,
    model: Parameterization,
    examples: np.ndarray,
    config: BoundConfig,
    batch_size: int,
    key: Array,
) -> dict:
    """The reverse-SDE model's bound on the NLL of ``examples`` (``likelihood_bound``) in padded
    batches of ``batch_size``: ``evaluate_bound``'s figures over the real examples."""
    examples = np.asarray(examples, np.float32)
    batch_size = min(batch_size, examples.shape[0])
    fn = make_bound_fn(model.model_apply(apply_fn), model, config)
    return evaluate_bound(fn, params, padded_batches(examples, batch_size), key)


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    return value if value is not None and math.isfinite(value) else None
