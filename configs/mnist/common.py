"""Shared by the MNIST recipes: the three rows on 28x28 digits with one DDPM++ network.

There is no single published anchor for these three methods on MNIST; the network is a
DDPM++ scaled to 28x28 (64 channels, resolutions 28, 14, 7, 2 blocks, attention at 14x14,
dropout 0.1: 7.0 M parameters), and each row keeps its method's recipe from the CIFAR-10
configs (weighting, time sampler, sampler, optimiser), at batch 128 for 100k steps. No flips:
digits are not mirror-symmetric.
"""

import pathlib
import runpy

_image = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "cifar10" / "common.py"))

MODEL = {
    "channels": 64,
    "channel_mult": (1, 2, 2),
    "num_blocks": 2,
    "attn_resolutions": (14,),
    "dropout": 0.1,
    "embedding": "positional",
}

TRAINING = {
    "batch_size": 128,
    "num_steps": 100_000,
    "steps_per_call": 100,
    "log_every": 1000,
    "checkpoint_every": 10_000,
    "sample_every": 10_000,
}

ROWS = {
    # score_sde VP-SDE with likelihood weighting and log-SNR importance sampling.
    "ddpmpp_vp_ml": dict(
        diffusion={"schedule": "linear_vp", "t_min": 1e-5, "prediction": "eps",
                   "sigma_data": 0.5, "scale_input": False},
        loss={"weighting": "ml", "time_sampler": "log_snr", "importance_weighted": True},
        optimizer={"learning_rate": 2e-4, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 1.0},
        training={**TRAINING, "ema_decays": (0.9999,)},
        sampler={"name": "ode", "rtol": 1e-5, "atol": 1e-5},
    ),
    # EDM: preconditioning, log-normal sigma, Heun 18 steps.
    "edm_ve": dict(
        diffusion={"schedule": "ve", "t_min": 0.002, "t_max": 80.0, "prediction": "edm",
                   "sigma_data": 0.5, "scale_input": True},
        loss={"weighting": "edm", "time_sampler": "lognormal", "p_mean": -1.2, "p_std": 1.2,
              "importance_weighted": False},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 0.0},
        training={**TRAINING, "ema_decays": (0.9995,)},
        sampler={"name": "heun", "nfe": 35, "grid": "karras", "rho": 7.0},
    ),
    # Rectified flow: velocity MSE, uniform s, RK45 on the flow ODE.
    "rf": dict(
        diffusion={"schedule": "rf", "prediction": "velocity", "sigma_data": 0.5,
                   "scale_input": False},
        loss={"weighting": "velocity", "time_sampler": "uniform", "importance_weighted": False},
        optimizer={"learning_rate": 2e-4, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 1.0},
        training={**TRAINING, "ema_decays": (0.9999,)},
        sampler={"name": "ode", "rtol": 1e-5, "atol": 1e-5},
    ),
}


def mnist_config(row: str, dataset: str = "mnist"):
    return _image["image_config"](
        data={"name": dataset, "random_flip": False, "dequantize": row == "ddpmpp_vp_ml",
              "num_threads": 4},
        model=MODEL,
        eval={
            "num_samples": 1024,
            "nll_examples": 1024 if row == "ddpmpp_vp_ml" else 0,
            "nll_divergence": "hutchinson",
        },
        **ROWS[row],
    )
