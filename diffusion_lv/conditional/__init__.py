"""Conditional generation with an unconditional model: inpainting, imputation, guidance.

High level: ``sample_conditional(model_fn, model, key, condition, ConditionalConfig(method=...,
nfe=..., **options))`` for any schedule and output kind. ``condition`` is an ``Inpainting(mask,
values)`` (known coordinates) or an ``Observation(operator, y, noise_std)`` (``y = A(x) +
noise``, for ``dps``). Methods: ``replacement``, ``repaint``, ``langevin``, ``smc`` (a particle
filter, smc.py), ``dps``. Low level: ``sample_<method>(denoiser, z_T, key, sigmas, condition, *,
options...)`` over the canonical denoiser, conventions in samplers.py (which also states what
each method approximates and what becomes exact in which limit). The exact conditionals of a
Gaussian mixture, for testing, are ``oracle.condition`` and ``oracle.linear_gaussian_posterior``.
"""

from diffusion_lv.conditional.api import METHODS, ConditionalConfig, sample_conditional
from diffusion_lv.conditional.observations import (
    Inpainting,
    Observation,
    blur_operator,
    downsample_operator,
    mask_operator,
    operator_matrix,
)
from diffusion_lv.conditional.samplers import (
    langevin_unknown_step,
    sample_dps,
    sample_langevin,
    sample_repaint,
    sample_replacement,
)
from diffusion_lv.conditional.smc import sample_smc

__all__ = [
    "METHODS",
    "ConditionalConfig",
    "Inpainting",
    "Observation",
    "blur_operator",
    "downsample_operator",
    "langevin_unknown_step",
    "mask_operator",
    "operator_matrix",
    "sample_conditional",
    "sample_dps",
    "sample_langevin",
    "sample_repaint",
    "sample_replacement",
    "sample_smc",
]
