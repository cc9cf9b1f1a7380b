"""Shared by the digits configs: scikit-learn's 8x8 digits, a small U-Net, the paper's rows.

A digits config is ``digits_config(row)``: configs/default.py with the data, model and training
sections replaced for images and the row's keys (schedule, network output, weighting, time
sampler, sampler) overridden. The data ship with scikit-learn (no download); on a 2-core CPU a
row trains in minutes to recognisable digits. Quality is measured by the Frechet distance in the
features of a small digits classifier against the train-vs-test floor (data/digits_features.py).
"""

import pathlib
import runpy

from ml_collections import config_dict

_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))

# Digits scaled to [-1, 1] have mean -0.39 and standard deviation 0.75 (the 1500 train images).
SIGMA_DATA = 0.75

ROWS = {
    # VP-SDE: eps network in the paper's VP (alpha = exp(-t/2), t <= 10), the DDPM eps loss,
    # times uniform in log-SNR; the reverse SDE (rate c = 2) by a second-order exponential
    # integrator that is exact in the linear part.
    "vp_sde": {
        "diffusion.schedule": "vp",
        "diffusion.prediction": "eps",
        "loss.weighting": "eps",
        "loss.time_sampler": "log_snr",
        "loss.importance_weighted": False,
        "sampler.name": "dpmpp_2m_sde",
        "sampler.c": 2.0,
        "sampler.grid": "log_snr",
        "sampler.nfe": 50,
    },
    # VE-Karras / EDM: preconditioned network (c_skip, c_out, c_in, c_noise), EDM weighting,
    # log-normal noise levels (P_mean -1.2, P_std 1.2), Heun on the Karras grid (rho = 7).
    "ve_karras": {
        "diffusion.schedule": "ve",
        "diffusion.prediction": "edm",
        "loss.weighting": "edm",
        "loss.time_sampler": "lognormal",
        "loss.importance_weighted": False,
        "sampler.name": "heun",
        "sampler.grid": "karras",
        "sampler.nfe": 35,
    },
    # Rectified flow: velocity network v = eps - x0, plain velocity MSE, uniform s; Euler steps
    # uniform in s on the probability-flow ODE.
    "rf": {
        "diffusion.schedule": "rf",
        "diffusion.prediction": "velocity",
        "loss.weighting": "velocity",
        "loss.time_sampler": "uniform",
        "loss.importance_weighted": False,
        "sampler.name": "euler",
        "sampler.c": 1.0,
        "sampler.grid": "uniform_t",
        "sampler.nfe": 50,
    },
}


def digits_config(row: str):
    config = _default["get_config"]()
    config.data = config_dict.ConfigDict(
        {"name": "digits", "random_flip": False, "dequantize": False, "num_threads": 2}
    )
    config.model = config_dict.ConfigDict({
        "name": "unet",
        "channels": 32,
        "channel_mult": (1, 2),  # 8x8 and 4x4
        "num_blocks": 2,
        "attn_resolutions": (4,),
        "dropout": 0.0,
        "embedding": "positional",
    })
    config.diffusion.sigma_data = SIGMA_DATA
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.decay = "cosine"
    config.training.batch_size = 128
    config.training.num_steps = 2000
    # XLA:CPU runs convolution gradients inside a loop ~100x slower than unrolled (measured):
    # one unrolled update per call (compiles fastest; the per-call host sync is negligible).
    config.training.steps_per_call = 1
    config.training.unroll_steps = True
    config.training.log_every = 100
    config.training.checkpoint_every = 500
    config.training.sample_every = 1000
    config.training.ema_decays = (0.999,)
    # 1500 samples: as many as the train images, the Frechet floor's sample size.
    config.eval.num_samples = 1500
    # The probability-flow NLL of 8x8 images takes minutes on a CPU: off unless asked for
    # (e.g. --config.eval.nll_examples=297, the whole test split, in bits/dim).
    config.eval.nll_examples = 0
    config.eval.nll_divergence = "hutchinson"  # 64 dimensions: one probe, not 64 JVPs
    for dotted, value in ROWS[row].items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config
