"""Experiment 3, forward-reverse duality: ``python -m experiments.duality``."""

from ml_collections import config_dict


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    config.mixture = config_dict.ConfigDict(
        {"name": "ring", "num_modes": 8, "radius": 2.0, "std": 0.3}
    )
    config.schedules = ("vp", "ve", "rf")
    config.rates = (1.0, 2.0)  # c = 1: probability-flow ODE split, c = 2: reverse SDE split
    # Canonical noise levels sigma_ve at which q_{t'} is compared with p_{T - t'}; the first is
    # the start T, the last the end. The same levels (the same laws up to scale) for every
    # schedule; each schedule reaches them at its own times.
    config.levels = (1.5, 0.75, 0.4, 0.2, 0.1, 0.01)
    # Starts: "exact" (q_0 = p_T, the paper's eq. 10) and "prior" (q_0 = N(0, sigma_ve(T)^2 I) in
    # canonical coordinates, the Gaussian that p_T only approaches as T grows; at this small T
    # the difference is large on purpose).
    config.starts = ("exact", "prior")
    # Euler(-Maruyama) steps of the reverse split in the schedule's own coordinates, uniform in
    # its own time between consecutive levels (about num_steps in all).
    config.num_steps = 800
    config.num_samples = 2048
    config.num_projections = 128
    config.floor_draws = 20
    if size == "full":
        config.num_seeds = 10
        config.schedules = ("vp", "ve", "rf", "linear_vp", "cosine_vp")
        config.rates = (1.0, 2.0, 4.0)
        config.levels = (10.0, 3.0, 1.5, 0.75, 0.4, 0.2, 0.1, 0.01)
        config.num_steps = 4000
        config.num_samples = 16384
        config.num_projections = 256
        config.floor_draws = 50
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: ['default', 'full']")
    return config
