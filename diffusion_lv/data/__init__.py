"""Data sets: deterministic toy 2-D sets (``toy``); image pipelines come with the image work."""

from diffusion_lv.data.toy import DATASETS, data_std, exact_density, get_dataset

__all__ = ["DATASETS", "data_std", "exact_density", "get_dataset"]
