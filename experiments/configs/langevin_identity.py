"""Experiment 1, Langevin is the identity: ``python -m experiments.langevin_identity``."""

from ml_collections import config_dict


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    config.num_seeds = 3  # independent repetitions: the spread in the table
    # p: 8 isotropic modes of std 0.3 on a circle of radius 2 (a barrier of ~2.6 nats between
    # neighbours, so mixing around the ring is visibly slower than within a mode).
    config.mixture = config_dict.ConfigDict(
        {"name": "ring", "num_modes": 8, "radius": 2.0, "std": 0.3}
    )
    config.num_samples = 2048
    # Starts: "data" (exact samples of p), "one_mode" (all mass in the first mode),
    # "offset" (a narrow Gaussian of std 0.1 at `offset`, away from all modes).
    config.starts = ("data", "one_mode", "offset")
    config.offset = (3.0, 3.0)
    # Euler-Maruyama step sizes of dx = score dtau + sqrt(2) dW; the chain's stationary law is
    # p only as the step goes to 0 (bias of first order in the step).
    config.step_sizes = (0.04, 0.01)
    config.langevin_time = 40.0
    config.num_checkpoints = 20
    config.num_projections = 128
    config.floor_draws = 20
    if size == "full":
        config.num_seeds = 10
        config.num_samples = 16384
        config.step_sizes = (0.04, 0.01, 0.0025)
        config.langevin_time = 80.0
        config.num_checkpoints = 80
        config.num_projections = 256
        config.floor_draws = 50
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: ['default', 'full']")
    return config
