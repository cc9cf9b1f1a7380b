"""Conditional samplers over the unconditional denoiser: replacement, RePaint, Langevin, DPS.

Signature, as for the unconditional samplers (samplers/base.py): ``(denoiser, z_T, key, sigmas,
condition, *, options...) -> (x, info)`` with ``denoiser(z, sigma_ve) = E[x0 | z]`` in canonical
(VE) coordinates, ``sigmas`` a concrete decreasing grid (a trailing 0: finish with
``D(z, sigma_min)``), one ``lax.scan`` over the grid, ``info["nfe"]`` the exact number of
denoiser evaluations (``info["vjp"]``: backward passes through it, DPS only). The output has the
known coordinates of an ``Inpainting`` pasted exactly.

Notation: known coordinates K with clean values ``y``, unknown U; ``z = x + sigma * eps``.
The target is ``p(x_U | x_K = y)``; at level sigma its exact noisy family is
``q_sigma(z_U) = p_sigma(z_U | x_K = y)`` (U noised, K clean). The unconditional model only gives
the score of ``p_sigma(z_U, z_K)`` with *both* parts noised, so ``q_sigma``'s score is not
available and every method below approximates it:

* ``replacement``: reverse split (Euler with rate c) on the whole state, the known part
  replaced by ``y + sigma * eps`` (fresh eps) at every level. The unknown part never sees the
  noise it is pasted with: biased at any NFE (the bias does not vanish as steps grow).
* ``repaint`` (Lugmayr et al. 2022): replacement with ``resamples`` round trips per level, the
  way back the exact forward split ``z += sqrt(sigma^2 - sigma'^2) N(0, I)``. Less biased,
  still not exact for a finite number of resamples.
* ``langevin``: replacement's predictor, then at every new level ``k_i`` Langevin steps on
  ``z_U`` only, ``z_U += h s_U(z) + sqrt(2h) xi`` with ``h = step_scale * sigma^2`` (the model
  score's stiffest direction has curvature <= 1/sigma^2, so ``step_scale < 2`` is stable), the
  known part held at ``y`` (``hold="clean"``, the default) or at ``y + sigma * eps``
  (``hold="noisy"``, one eps per level). A level's chain samples ``p_sigma(z_U | z_K)``, which
  is the target's noisy family ``q_sigma`` up to ``O(sigma^2 / lambda)`` (``lambda``: the
  smallest variance of a component's known block). For one Gaussian with blocks ``a, g, b`` both
  holds give the mean ``g y / (b + sigma^2)`` (exact: ``g y / b``); the variance is
  ``a + sigma^2 - g^2 / (b + sigma^2)`` held clean (exact: ``a + sigma^2 - g^2 / b``) and larger
  by ``g^2 sigma^2 / (b + sigma^2)^2`` held noisy, hence the default. The component *weights*
  of a level's target are ``pi_k N(y; mu_k, C_k + sigma^2)`` instead of ``N(y; mu_k, C_k)``:
  where they still change at a level whose modes are already separated by a barrier in
  ``z_U``, the chain needs exponentially many steps to move mass between them (docs/
  conditional.md shows it). A final phase runs ``final_steps`` Langevin steps at
  ``sigma_min`` with ``z_K = y`` exactly, whose stationary law ``p_{sigma_min}(z_U | z_K = y)``
  followed by the final denoise is ``p(x_U | y)`` up to ``O(sigma_min^2 / lambda)``.
  **What is exact in which limit**: at each level the chain converges geometrically in its
  steps (factor ``1 - h / v`` per step in a direction of variance ``v``) to the unadjusted-
  Langevin stationary law of the level's target, off by ``O(h)`` (Gaussian of variance ``v``:
  ``v / (1 - h / (2 v))``). As steps -> inf the output therefore tends to the law of
  ``D(z, sigma_min)`` with ``z`` from that chain at ``sigma_min``: ``p(x_U | x_K = y)`` up to
  ``O(h) + O(sigma_min^2)`` (``O(sigma_min)`` for a target with atoms), exact as ``h`` and
  ``sigma_min -> 0``. **Rate** at a fixed grid: a direction of variance ``v`` relaxes by
  ``k step_scale sigma^2 / v`` per level while the level's target moves by ``O(sigma^2 / b)``
  times the grid's log-spacing, so the chain lags by ``O(v log-spacing / (b k step_scale))``:
  first order in ``1 / k`` (tests/test_conditional.py measures order 1.1 on a 2-D Gaussian).
  The annealed levels make the final phase unnecessary for well-mixed problems; they place
  mass in the right modes where a chain at small sigma alone could not.
  ``langevin_steps=0, hold="noisy"`` with no final phase is ``replacement``.
* ``smc`` (smc.py): a particle filter with the known part's forward-noised path as
  observations; its weights fix the mode weights that the Langevin chain cannot move.
* ``dps`` (Chung et al. 2023): for ``y = A(x) + noise``, the reverse split with rate c plus the
  guidance ``z -= guidance_scale * grad_z ||y - A(D(z, sigma))||`` per example (``D``'s vector-
  Jacobian product: one backward pass per step). Approximate at every NFE (``A(D(z))`` stands in
  for the unknown law of ``A(x0)`` given ``z``). ``final_steps`` adds Langevin steps at
  ``sigma_min`` on the exact log-posterior ``log p_{sigma_min}(z) - ||y - A(z)||^2 / (2 s^2)``
  (``noise_std = s > 0``), which tends to ``p(x | y)`` as ``sigma_min -> 0``; the step is
  ``final_step_scale / (1/sigma_min^2 + 1/s^2)``, stable for ``||A|| <= 1``.

Randomness: step ``i`` uses ``fold_in(key, i)``; the known part's initial noise and the final
phase use ``fold_in(key, 2**32 - 1)`` and ``fold_in(key, 2**32 - 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.conditional.observations import (
    Inpainting,
    check_inpainting,
    check_observation,
)
from diffusion_lv.samplers.base import Denoiser, check_rate, check_sigmas, denoise, score
from diffusion_lv.samplers.euler import split_euler_step

Array = jax.Array
HOLDS = ("noisy", "clean")
PER_STEP_OPTIONS = ("langevin_steps", "step_scale")  # one number, or one entry per step
INITIAL, FINAL = 2**32 - 1, 2**32 - 2  # fold_in tags of the draws outside the steps


# -- options --------------------------------------------------------------------------------


def per_step(name: str, value, num_steps: int, integer: bool, lo: float, lo_open: bool):
    """An option given as one number or one per step (``num_steps`` of them), as an array."""
    values = list(value) if isinstance(value, Sequence | np.ndarray) else [value]
    for v in values:
        v = v.item() if isinstance(v, np.generic) else v
        checks.number(name, v, lo=lo, lo_open=lo_open, integer=integer)
    if len(values) not in (1, num_steps):
        raise ValueError(
            f"{name} has {len(values)} entries; valid: one number or one per step "
            f"({num_steps} steps on this grid)"
        )
    return np.broadcast_to(np.asarray(values, np.int64 if integer else np.float64), (num_steps,))


def check_langevin(
    c,
    langevin_steps,
    step_scale,
    hold,
    final_steps,
    final_step_scale,
    levels=(1.0, 0.5),
    langevin_sigma_max=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The options' checks; the Langevin steps and step scales of each step on ``levels``."""
    check_rate(c)
    levels = np.asarray(levels, np.float64)
    num_steps = len(levels) - 1
    steps = per_step("langevin_steps", langevin_steps, num_steps, True, 0, False)
    checks.number("langevin_sigma_max", langevin_sigma_max, lo=0.0, lo_open=True, optional=True)
    if langevin_sigma_max is not None:
        steps = np.where(levels[1:] <= langevin_sigma_max, steps, 0)
    scales = per_step("step_scale", step_scale, num_steps, False, 0.0, True)
    checks.choice("hold", hold, HOLDS)
    checks.number("final_steps", final_steps, lo=0, integer=True)
    checks.number("final_step_scale", final_step_scale, lo=0.0, lo_open=True)
    return steps, scales


def check_repaint(c, resamples) -> None:
    check_rate(c)
    checks.number("resamples", resamples, lo=1, integer=True)


def check_dps(c, guidance_scale, final_steps, final_step_scale, noise_std=None) -> None:
    check_rate(c)
    checks.number("guidance_scale", guidance_scale, lo=0.0)
    checks.number("final_steps", final_steps, lo=0, integer=True)
    checks.number("final_step_scale", final_step_scale, lo=0.0, lo_open=True)
    if final_steps and noise_std is not None and not noise_std > 0:
        raise ValueError(
            f"final_steps={final_steps} needs an observation with noise_std > 0 "
            f"(its likelihood), got noise_std={noise_std!r}; valid: final_steps=0"
        )


# -- shared pieces --------------------------------------------------------------------------


def _known_at(condition: Inpainting, sigma, key: Array, hold: str = "noisy") -> Array:
    """The known part at level ``sigma``: ``y + sigma * eps`` (fresh eps) or ``y``."""
    values = condition.values
    if hold == "clean":
        return values
    return values + sigma * jax.random.normal(key, values.shape, values.dtype)


def langevin_unknown_step(denoiser: Denoiser, z: Array, sigma, step, key: Array, mask) -> Array:
    """One Langevin step of ``p_sigma`` on the unknown coordinates only (``~mask``)."""
    noise = jax.random.normal(key, z.shape, z.dtype)
    moved = z + step * score(denoiser, z, sigma) + jnp.sqrt(2.0 * step) * noise
    return jnp.where(mask, z, moved)


def langevin_at(denoiser, z, sigma, step, key, mask, num_steps) -> Array:
    """``num_steps`` (traced or not) Langevin steps of ``p_sigma`` on the unknown coordinates."""

    def body(j, z):
        return langevin_unknown_step(denoiser, z, sigma, step, jax.random.fold_in(key, j), mask)

    return jax.lax.fori_loop(0, num_steps, body, z)


def scan_levels(step, carry, key: Array, levels: np.ndarray, extra=(), trajectory=False):
    """``step(carry, sigma, sigma_next, key, *extra_i) -> carry`` over consecutive levels, one
    scan; the levels in the dtype of the carry's first leaf (the state), which is also what the
    trajectory keeps."""
    n = levels.shape[0] - 1
    dtype = jax.tree.leaves(carry)[0].dtype
    inputs = (
        jnp.arange(n),
        jnp.asarray(levels[:-1], dtype),
        jnp.asarray(levels[1:], dtype),
        *(jnp.asarray(e) for e in extra),
    )

    def body(z, inputs):
        i, sigma, sigma_next, *rest = inputs
        z = step(z, sigma, sigma_next, jax.random.fold_in(key, i), *rest)
        return z, (jax.tree.leaves(z)[0] if trajectory else None)

    return jax.lax.scan(body, carry, inputs)


def finish(denoiser, z, condition, levels, final_denoise, nfe, path, **extra):
    """``D(z, sigma_min)`` (or ``z``) with the known values pasted exactly."""
    if final_denoise:
        z = denoise(denoiser, z, levels[-1])
        nfe += 1
    if isinstance(condition, Inpainting):
        z = condition.paste(z)
    info = {"nfe": int(nfe), "sigmas": levels, **extra}
    if path is not None:
        info["trajectory"] = path
    return z, info


# -- the samplers ---------------------------------------------------------------------------


def sample_langevin(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    condition: Inpainting,
    *,
    c: float = 1.0,
    langevin_steps: int | Sequence[int] = 2,
    step_scale: float | Sequence[float] = 0.5,
    hold: str = "clean",
    langevin_sigma_max: float | None = None,
    final_steps: int = 0,
    final_step_scale: float = 0.5,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Reverse split (rate c) + ``langevin_steps`` Langevin steps on the unknown coordinates at
    every new level (one number, or one per step; none at levels above ``langevin_sigma_max``)
    + ``final_steps`` at ``sigma_min`` with the known coordinates clean. ``1 + langevin_steps``
    evaluations per step."""
    levels, final_denoise = check_sigmas(sigmas)
    steps, scales = check_langevin(
        c,
        langevin_steps,
        step_scale,
        hold,
        final_steps,
        final_step_scale,
        levels,
        langevin_sigma_max,
    )
    num_steps = levels.shape[0] - 1
    check_inpainting(condition, z.shape)
    mask = condition.mask
    z = condition.paste(z, _known_at(condition, levels[0], jax.random.fold_in(key, INITIAL), hold))

    def step(z, sigma, sigma_next, key, k, scale):
        z = split_euler_step(denoiser, z, sigma, sigma_next, jax.random.fold_in(key, 0), c)
        z = condition.paste(z, _known_at(condition, sigma_next, jax.random.fold_in(key, 1), hold))
        h = scale * jnp.square(sigma_next)
        return langevin_at(denoiser, z, sigma_next, h, jax.random.fold_in(key, 2), mask, k)

    extra = (steps, scales.astype(np.dtype(z.dtype)))
    z, path = scan_levels(step, z, key, levels, extra, trajectory)
    if final_steps:
        z = condition.paste(z)
        sigma_min = levels[-1]
        h = final_step_scale * sigma_min**2
        z = langevin_at(
            denoiser, z, sigma_min, h, jax.random.fold_in(key, FINAL), mask, final_steps
        )
    nfe = num_steps + int(steps.sum()) + final_steps
    return finish(denoiser, z, condition, levels, final_denoise, nfe, path if trajectory else None)


def sample_replacement(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    condition: Inpainting,
    *,
    c: float = 1.0,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """The known part noised to the current level and pasted; Euler with rate c in between."""
    return sample_langevin(
        denoiser,
        z,
        key,
        sigmas,
        condition,
        c=c,
        langevin_steps=0,
        hold="noisy",
        trajectory=trajectory,
    )


def sample_repaint(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    condition: Inpainting,
    *,
    c: float = 2.0,
    resamples: int = 4,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """RePaint: ``resamples`` replacement steps per level, each but the last followed by the
    exact forward jump back to the level. ``resamples`` evaluations per step."""
    check_repaint(c, resamples)
    levels, final_denoise = check_sigmas(sigmas)
    check_inpainting(condition, z.shape)
    z = condition.paste(z, _known_at(condition, levels[0], jax.random.fold_in(key, INITIAL)))

    def down(z, sigma, sigma_next, key):
        z = split_euler_step(denoiser, z, sigma, sigma_next, jax.random.fold_in(key, 0), c)
        return condition.paste(z, _known_at(condition, sigma_next, jax.random.fold_in(key, 1)))

    def step(z, sigma, sigma_next, key):
        def round_trip(r, z):
            key_r = jax.random.fold_in(key, r)
            z = down(z, sigma, sigma_next, key_r)
            jump = jnp.sqrt(jnp.square(sigma) - jnp.square(sigma_next))
            return z + jump * jax.random.normal(jax.random.fold_in(key_r, 2), z.shape, z.dtype)

        z = jax.lax.fori_loop(0, resamples - 1, round_trip, z)
        return down(z, sigma, sigma_next, jax.random.fold_in(key, resamples - 1))

    z, path = scan_levels(step, z, key, levels, trajectory=trajectory)
    nfe = resamples * (levels.shape[0] - 1)
    return finish(denoiser, z, condition, levels, final_denoise, nfe, path if trajectory else None)


def sample_dps(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    condition,
    *,
    c: float = 2.0,
    guidance_scale: float = 1.0,
    final_steps: int = 0,
    final_step_scale: float = 0.5,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """DPS guidance on the reverse split for ``y = A(x) + noise`` (an ``Observation``, or an
    ``Inpainting`` read as ``y = mask * x``); one evaluation and one backward pass per step."""
    observation = check_observation(condition)
    check_dps(c, guidance_scale, final_steps, final_step_scale, observation.noise_std)
    levels, final_denoise = check_sigmas(sigmas)

    def residual_norms(z, sigma):
        x0 = denoise(denoiser, z, sigma)
        r = observation.residual(x0).reshape(z.shape[0], -1)
        # sqrt(|r|^2 + tiny): the norm's gradient stays finite at a zero residual.
        return jnp.sum(jnp.sqrt(jnp.sum(jnp.square(r), axis=-1) + 1e-30)), x0

    def step(z, sigma, sigma_next, key):
        grad, x0 = jax.grad(residual_norms, has_aux=True)(z, sigma)
        # The Euler step reuses this level's denoised value: no second evaluation.
        z = split_euler_step(lambda *_: x0, z, sigma, sigma_next, key, c)
        return z - guidance_scale * grad

    z, path = scan_levels(step, z, key, levels, trajectory=trajectory)
    num_steps = levels.shape[0] - 1
    if final_steps:
        sigma_min = levels[-1]
        s2 = observation.noise_std**2
        h = final_step_scale / (1.0 / sigma_min**2 + 1.0 / s2)

        def log_likelihood(z):
            return -0.5 * jnp.sum(jnp.square(observation.residual(z))) / s2

        def posterior_step(j, z):
            noise = jax.random.normal(jax.random.fold_in(key_final, j), z.shape, z.dtype)
            grad = score(denoiser, z, sigma_min) + jax.grad(log_likelihood)(z)
            return z + h * grad + jnp.sqrt(2.0 * h) * noise

        key_final = jax.random.fold_in(key, FINAL)
        z = jax.lax.fori_loop(0, final_steps, posterior_step, z)
    return finish(
        denoiser,
        z,
        condition,
        levels,
        final_denoise,
        num_steps + final_steps,
        path if trajectory else None,
        vjp=num_steps,
    )
