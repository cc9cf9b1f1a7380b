"""Samplers: every reverse process as one compiled program over the canonical denoiser.

High level: ``sample(model_fn, model, key, shape, SamplerConfig(name=..., nfe=..., **options))``
with ``model`` a ``Parameterization`` (schedule, prediction, sigma_data) that says how to read
``model_fn(x, t)``. ``CONFIG_KEYS``: every valid setting; ``SAMPLERS[name].options``: the
options sampler ``name`` reads, with their defaults. ``recommended(nfe)``: the measured choice
per budget (docs/samplers.md). ``fit_grid``: a step grid fitted to a model (``grid="optimized"``).
Low level: ``sample_<family>(denoiser, z_T, key, sigmas, *, options...)`` with
``denoiser(z, sigma_ve)`` (conventions in base.py) and a grid from grids.py.
"""

from diffusion_lv.samplers.adams import sample_deis, sample_ipndm, sample_lms
from diffusion_lv.samplers.api import (
    COMMON_FIELDS,
    CONFIG_KEYS,
    FITTED_GRID,
    PREDICTORS,
    SAMPLERS,
    SamplerConfig,
    SamplerSpec,
    initial_noise,
    sample,
)
from diffusion_lv.samplers.ddim import ddim_step, sample_ddim, sample_ddpm
from diffusion_lv.samplers.euler import sample_euler, split_euler_step
from diffusion_lv.samplers.fitted_grid import (
    FittedGrid,
    evaluate_grid,
    fit_best,
    fit_grid,
    load_fitted,
    save_fitted,
    with_fitted,
)
from diffusion_lv.samplers.grids import GRIDS, get_sigmas
from diffusion_lv.samplers.heun import heun_step, sample_heun
from diffusion_lv.samplers.multistep import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_exponential_multistep,
)
from diffusion_lv.samplers.ode import sample_ode
from diffusion_lv.samplers.pc import langevin_corrector_step, sample_pc
from diffusion_lv.samplers.recommend import fitted_candidates, recommended
from diffusion_lv.samplers.smld import sample_smld
from diffusion_lv.samplers.unipc import sample_unipc

__all__ = [
    "COMMON_FIELDS",
    "CONFIG_KEYS",
    "FITTED_GRID",
    "GRIDS",
    "PREDICTORS",
    "SAMPLERS",
    "FittedGrid",
    "SamplerConfig",
    "SamplerSpec",
    "ddim_step",
    "evaluate_grid",
    "fit_best",
    "fit_grid",
    "fitted_candidates",
    "get_sigmas",
    "heun_step",
    "initial_noise",
    "langevin_corrector_step",
    "load_fitted",
    "recommended",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_deis",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_exponential_multistep",
    "sample_heun",
    "sample_ipndm",
    "sample_lms",
    "sample_ode",
    "sample_pc",
    "sample_smld",
    "sample_unipc",
    "save_fitted",
    "split_euler_step",
    "with_fitted",
]
