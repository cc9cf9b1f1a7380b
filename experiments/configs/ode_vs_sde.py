"""Experiment 5, ODE versus SDE with an imperfect score: ``python -m experiments.ode_vs_sde``."""

from ml_collections import config_dict

SIZES = ("default", "full", "test")


def get_config(size: str = "default"):
    config = config_dict.ConfigDict()
    config.seed = 0
    # Seed i (seed + i) trains its own model and draws its own x_T, sampling noise and reference.
    config.num_seeds = 3
    # The trained models: a ring8 toy config (configs/toy.py:<model_config>, named SET_ROW;
    # ring8 has an exact density), trained for each number of updates in train_steps (2000 is the
    # config's own length; 1000 a deliberately worse score). train_width overrides the MLP width
    # (None: the config's).
    config.model_config = "ring8_vp_sde"
    config.train_steps = (1000, 2000)
    config.train_width = config_dict.placeholder(int)
    # Samplers, all on the same noise grid (karras, the trained model's schedule's range):
    # Euler(-Maruyama) on the reverse split at each rate c (1: probability-flow ODE, 2: reverse
    # SDE, 3: extra Langevin churn) and, when heun_churn > 0, deterministic Heun (ODE) against
    # EDM's stochastic Heun with s_churn = heun_churn.
    config.rates = (1.0, 2.0, 3.0)
    config.heun_churn = 0.0
    config.nfes = (5, 10, 20, 50, 100, 200)
    config.grid = "karras"
    config.num_samples = 8192
    config.num_projections = 128
    config.floor_draws = 20
    config.entropy_samples = 1 << 20  # Monte Carlo estimate of the entropy of p_0
    if size == "full":
        config.num_seeds = 10
        config.nfes = (5, 10, 20, 50, 100, 200, 500, 1000)
        config.num_samples = 65536
        config.num_projections = 256
        config.floor_draws = 50
        config.entropy_samples = 1 << 24
        config.train_steps = (1000, 2000, 4000)
        config.heun_churn = 40.0
    elif size == "test":
        config.num_seeds = 2
        config.train_steps = (1000,)
        config.rates = (1.0, 2.0)
        config.heun_churn = 0.0
        config.nfes = (10, 100)
        config.num_samples = 4096
        config.num_projections = 64
        config.floor_draws = 10
        config.entropy_samples = 1 << 16
    elif size != "default":
        raise ValueError(f"unknown config size {size!r}; valid choices: {list(SIZES)}")
    return config
