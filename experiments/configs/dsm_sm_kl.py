"""Experiment 7, DSM = SM + constant and the KL decay law: ``python -m experiments.dsm_sm_kl``."""

from ml_collections import config_dict


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.mixture = config_dict.ConfigDict(
        {"name": "ring", "num_modes": 8, "radius": 2.0, "std": 0.3}
    )
    # Canonical noise levels sigma_ve of the times t compared (each schedule's own t there).
    config.levels = (0.1, 0.3, 1.0, 3.0)
    # DSM vs SM: in this schedule, for models s_theta = score of a perturbed mixture q_t (and two
    # plain functions of the exact score).
    config.dsm_schedule = "vp"
    config.dsm_samples = 65536
    # KL decay: q is the perturbed mixture "shift_and_widen" pushed through the same forward SDE.
    config.kl_schedules = ("vp", "ve", "rf")
    config.kl_samples = 65536
    config.fd_relative_step = 1e-3  # central difference step h = fd_relative_step * t
    if size == "full":
        config.levels = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
        config.dsm_samples = 1048576
        config.kl_schedules = ("vp", "ve", "rf", "linear_vp", "cosine_vp")
        config.kl_samples = 1048576
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: ['default', 'full']")
    return config
