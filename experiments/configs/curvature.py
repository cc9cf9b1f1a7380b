"""Experiment 4, curvature of probability-flow ODE paths: ``python -m experiments.curvature``."""

from ml_collections import config_dict


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.schedules = ("vp", "ve", "rf")
    # The data: one point (a delta at `point`), and a mixture.
    config.point = (1.0, 0.5)
    config.mixture = config_dict.ConfigDict(
        {"name": "ring", "num_modes": 8, "radius": 2.0, "std": 0.3}
    )
    # The same canonical range for every schedule (inside all their safe domains).
    config.sigma_max = 80.0
    config.sigma_min = 0.005
    config.num_trajectories = 256
    config.num_plotted = 12
    # Reference solution: adaptive Tsit5 in float64, saved at dense_levels log-spaced levels.
    config.dense_levels = 400
    config.rtol = 1e-10
    config.atol = 1e-10
    # Euler on the PF-ODE in each schedule's coordinates. The first grid should be one sigma_ve
    # grid shared by all schedules (karras or log_snr); uniform_t is each schedule's own
    # uniform-time grid (different sigma_ve levels per schedule).
    config.grids = ("karras", "uniform_t")
    config.rho = 7.0
    config.euler_steps = (1, 2, 4, 8, 16, 32, 64)
    if size == "full":
        config.schedules = ("vp", "ve", "rf", "linear_vp", "cosine_vp")
        config.num_trajectories = 4096
        config.num_plotted = 24
        config.dense_levels = 2000
        config.euler_steps = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: ['default', 'full']")
    return config
