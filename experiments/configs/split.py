"""Experiment 2, forward step + reverse step = Langevin step: ``python -m experiments.split``."""

from ml_collections import config_dict


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    config.mixture = config_dict.ConfigDict(
        {"name": "ring", "num_modes": 8, "radius": 2.0, "std": 0.3}
    )
    config.schedules = ("vp", "ve", "rf", "linear_vp", "cosine_vp")
    config.rates = (1.0, 2.0, 4.0)  # c: 1 ODE split, 2 reverse SDE, 4 extra churn
    # The fixed time t of each schedule is where sigma_ve(t) equals this: the same p_t (up to
    # the scale alpha) for every schedule.
    config.sigma_ve = 0.5
    # Every composed step is one Langevin step of size langevin_step in canonical units
    # (dz = h score_z + sqrt(2h) xi): d tau = 2 alpha^2 h / (c g^2) in the schedule's time.
    config.langevin_step = 0.01
    config.num_steps = 400
    config.num_samples = 2048
    config.num_projections = 128
    config.floor_draws = 20
    # One-step algebra (float64, common random numbers): Langevin steps h from h_max down by
    # factors of 4, num_levels of them.
    config.algebra_h_max = 1e-2
    config.algebra_levels = 5
    config.algebra_samples = 1024
    if size == "full":
        config.num_seeds = 10
        config.num_samples = 16384
        config.num_steps = 2000
        config.num_projections = 256
        config.floor_draws = 50
        config.algebra_levels = 7
        config.algebra_samples = 8192
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: ['default', 'full']")
    return config
