"""Shared by the MNIST recipes: the three rows on 28x28 digits with one DDPM++ network.

There is no single published anchor for these three methods on MNIST; the network is a
DDPM++ scaled to 28x28 (64 channels, resolutions 28, 14, 7, 2 blocks, attention at 14x14,
dropout 0.1: 7.0 M parameters), and each row keeps its method's recipe from the CIFAR-10
configs: the diffusion, loss and sampler sections are read from configs/cifar10/ROW.py, the
optimiser keeps its settings (EDM's warm-up shortened), at batch 128 for 100k steps. No flips:
digits are not mirror-symmetric.
"""

import importlib

from configs.cifar10.common import image_config

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

# Each row's own choices; its diffusion, loss and sampler sections are the CIFAR-10 recipe's.
ROWS = {
    "ddpmpp_vp_ml": dict(
        optimizer={"learning_rate": 2e-4, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 1.0},
        training={**TRAINING, "ema_decays": (0.9999,)},
    ),
    "edm_ve": dict(
        optimizer={"learning_rate": 1e-3, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 0.0},
        training={**TRAINING, "ema_decays": (0.9995,)},
    ),
    "rf": dict(
        optimizer={"learning_rate": 2e-4, "warmup_steps": 5000, "decay": "constant",
                   "grad_clip": 1.0},
        training={**TRAINING, "ema_decays": (0.9999,)},
    ),
}


def method_sections(row: str) -> dict:
    """The CIFAR-10 recipe's diffusion, loss and sampler sections (configs/cifar10/ROW.py)."""
    config = importlib.import_module(f"configs.cifar10.{row}").get_config()
    return {section: config[section].to_dict() for section in ("diffusion", "loss", "sampler")}


def mnist_config(row: str, dataset: str = "mnist"):
    return image_config(
        data={"name": dataset, "random_flip": False, "dequantize": row == "ddpmpp_vp_ml",
              "num_threads": 4},
        model=MODEL,
        eval={
            "num_samples": 1024,
            "nll_examples": 1024 if row == "ddpmpp_vp_ml" else 0,
            "nll_divergence": "hutchinson",
        },
        **method_sections(row),
        **ROWS[row],
    )
