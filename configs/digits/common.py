"""Shared by the digits configs: scikit-learn's 8x8 digits, a small U-Net, the paper's rows.

A digits config is ``digits_config(row)``: configs/default.py with the data and model sections
replaced for images (``image_config`` of configs/cifar10/common.py), the optimiser, training and
eval keys set for a 2-core CPU, and the row's keys (schedule, network output, weighting, time
sampler, sampler) overridden. The data ship with scikit-learn (no download); on a 2-core CPU a
row trains in minutes to recognisable digits. Quality is measured by the Frechet distance in the
features of a small digits classifier against the train-vs-test floor (data/digits_features.py).
"""

# The image recipes' constructor: configs/default.py with whole sections replaced.
from configs import toy
from configs.cifar10.common import image_config

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
    # Rectified flow: the toy sets' row (velocity network, plain velocity MSE, uniform s; Euler
    # steps uniform in s on the probability-flow ODE) with a budget of 50 steps.
    "rf": {**toy.ROWS["rf"], "sampler.nfe": 50},
}


def digits_config(row: str):
    config = image_config(
        data={"name": "digits", "random_flip": False, "dequantize": False, "num_threads": 2},
        model={
            "channels": 32,
            "channel_mult": (1, 2),  # 8x8 and 4x4
            "num_blocks": 2,
            "attn_resolutions": (4,),
            "dropout": 0.0,
            "embedding": "positional",
        },
        diffusion={"sigma_data": SIGMA_DATA},
        optimizer={"learning_rate": 2e-3, "warmup_steps": 100, "decay": "cosine"},
        training={
            "batch_size": 128,
            "num_steps": 2000,
            # XLA:CPU runs convolution gradients inside a loop ~100x slower than unrolled
            # (measured): one unrolled update per call (compiles fastest; the per-call host sync
            # is negligible).
            "steps_per_call": 1,
            "unroll_steps": True,
            "log_every": 100,
            "checkpoint_every": 500,
            "sample_every": 1000,
            "ema_decays": (0.999,),
        },
        eval={
            # 1500 samples: as many as the train images, the Frechet floor's sample size.
            "num_samples": 1500,
            "sample_batch_size": 500,
            # The probability-flow NLL of 8x8 images takes minutes on a CPU: off unless asked
            # for (e.g. --config.eval.nll_examples=297, the whole test split, in bits/dim).
            "nll_examples": 0,
            "nll_divergence": "hutchinson",  # 64 dimensions: one probe, not 64 JVPs
            # Trained on the grid values (data.dequantize=False): scored on bins centred on
            # them (DDPM's discretisation; "uniform" would be refused, docs/likelihood.md).
            "nll_dequantization": "centred",
        },
    )
    config.update_from_flattened_dict(ROWS[row])
    return config
