"""CIFAR-10, EDM (VE-Karras) with the DDPM++ network: Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", unconditional CIFAR-10 (FID 1.97).

* Preconditioning c_skip, c_out, c_in, c_noise with sigma_data 0.5; noise levels log-normal with
  P_mean -1.2, P_std 1.2; loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (``edm``).
* DDPM++ as in EDM: model_channels 128, channel_mult (2, 2, 2), 4 blocks per resolution,
  attention at 16x16, dropout 0.13, positional embedding (55.7 M parameters).
* Adam (0.9, 0.999, eps 1e-8), lr 1e-3 ramped up over 10 Mimg (19,531 steps of 512), batch 512,
  200 Mimg (390,625 steps), EMA half-life 0.5 Mimg (decay 0.5^(512/500000) = 0.99929 per step).
* Sampling: Heun's 2nd-order method, 18 steps (35 model evaluations), Karras grid rho 7,
  sigma in [0.002, 80].

Not reproduced: EDM's non-leaky geometric augmentation (p = 0.12) with augmentation labels.
"""

from configs.cifar10 import common


def get_config():
    return common.image_config(
        data={"name": "cifar10", "random_flip": False, "dequantize": False, "num_threads": 8},
        model={
            "channels": 128,
            "channel_mult": (2, 2, 2),
            "num_blocks": 4,
            "attn_resolutions": (16,),
            "dropout": 0.13,
            "embedding": "positional",
        },
        diffusion={
            "schedule": "ve",
            "t_min": 0.002,
            "t_max": 80.0,
            "prediction": "edm",
            "sigma_data": 0.5,
            "scale_input": True,
        },
        loss={
            "weighting": "edm",
            "time_sampler": "lognormal",
            "p_mean": -1.2,
            "p_std": 1.2,
            "importance_weighted": False,
        },
        optimizer={
            "name": "adam",
            "learning_rate": 1e-3,
            "warmup_steps": 19_531,
            "decay": "constant",
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip": 0.0,
        },
        training={
            "batch_size": 512,
            "num_steps": 390_625,
            "steps_per_call": 50,
            "log_every": 1000,
            "checkpoint_every": 20_000,
            "sample_every": 20_000,
            "ema_decays": (0.99929,),
        },
        sampler={"name": "heun", "nfe": 35, "grid": "karras", "rho": 7.0},
        eval={"num_samples": 1024, "nll_examples": 0, "nll_divergence": "hutchinson"},
    )
