"""Samplers: every reverse process as one compiled program over the canonical denoiser.

High level: ``sample(model_fn, prediction, schedule, key, shape, SamplerConfig(...))``.
Low level: ``sample_<family>(denoiser, z_T, key, sigmas, ...)`` with ``denoiser(z, sigma_ve)``
(see base.py for the conventions) and a grid from grids.py.
"""

from diffusion_lv.samplers.api import SAMPLERS, SamplerConfig, initial_noise, sample
from diffusion_lv.samplers.euler import sample_euler, split_euler_step
from diffusion_lv.samplers.grids import GRIDS, get_sigmas

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "SamplerConfig",
    "get_sigmas",
    "initial_noise",
    "sample",
    "sample_euler",
    "split_euler_step",
]
