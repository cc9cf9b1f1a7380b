"""Shared by the CIFAR-10 and MNIST recipes: an image config with every section stated.

``image_config(**sections)`` starts from configs/default.py and replaces whole sections (data,
model, diffusion, loss, optimizer, training, sampler, eval keys) with the values a recipe gives,
so each recipe file lists its full set of hyper-parameters in one place. Unlisted keys keep the
defaults of configs/default.py. Nothing here downloads: TFDS sets are prepared once beforehand
(``tfds build cifar10 --file_format=array_record``, see docs/images.md).
"""

from ml_collections import config_dict

from configs import default


def image_config(*, data: dict, model: dict, **sections):
    config = default.get_config()
    config.data = config_dict.ConfigDict(data)
    config.model = config_dict.ConfigDict({"name": "unet", **model})
    # NLL bins that match the training data (docs/likelihood.md): uniform bins for data trained
    # dequantised (score_sde's and Flow Matching's figures), bins centred on the levels (DDPM's
    # discretisation) for data trained on the grid values.
    config.eval.nll_dequantization = "uniform" if data["dequantize"] else "centred"
    config.inpaint.num_examples = 64  # a U-Net per step: fewer completions than for 2-D data
    for section, values in sections.items():
        config[section].update(values)
    return config


# score_sde's CIFAR-10 recipe, which the rectified-flow code base reuses: Adam with warm-up and
# clipping, batch 128, 1.3 M iterations; only the EMA decay differs between them.
SCORE_SDE_OPTIMIZER = {
    "name": "adam",
    "learning_rate": 2e-4,
    "warmup_steps": 5000,
    "decay": "constant",
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "grad_clip": 1.0,
}


def score_sde_ddpmpp(dropout: float) -> dict:
    """score_sde's DDPM++ cont. for 32x32 (61.8 M parameters); the recipes differ in dropout."""
    return {
        "channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_blocks": 4,
        "attn_resolutions": (16,),
        "dropout": dropout,
        "embedding": "positional",
    }


def score_sde_training(ema_decay: float) -> dict:
    return {
        "batch_size": 128,
        "num_steps": 1_300_000,
        "steps_per_call": 100,
        "log_every": 1000,
        "checkpoint_every": 50_000,
        "sample_every": 50_000,
        "ema_decays": (ema_decay,),
    }
