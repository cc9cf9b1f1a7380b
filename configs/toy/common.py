"""Shared by the toy configs: the paper's Table 7 rows as overrides of configs/default.py.

A toy config is ``toy_config(dataset, row)``: the base config with ``data.name`` set and the row's
keys overridden. Rows pick schedule, network output, weighting, time sampler and sampler
independently; the loss is always ``w(t) ||D - x0||^2`` (losses.py), written here in the output
space the paper's Table 7 uses.
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "default.py"))

ROWS = {
    # VP-SDE: score network, score matching E||-eps/sigma - s||^2 (x0 weight alpha^2/sigma^4,
    # which is w_ML for VP up to the factor 1/2), uniform t; reverse SDE (rate c = 2).
    "vp_sde": {
        "diffusion.schedule": "vp",
        "diffusion.prediction": "score",
        "loss.weighting": "score",
        "loss.time_sampler": "uniform",
        "loss.importance_weighted": False,
        "sampler.name": "euler",
        "sampler.c": 2.0,
        "sampler.nfe": 200,
    },
    # VP-ODE: the same model and loss; probability-flow ODE (rate c = 1).
    "vp_ode": {
        "diffusion.schedule": "vp",
        "diffusion.prediction": "score",
        "loss.weighting": "score",
        "loss.time_sampler": "uniform",
        "loss.importance_weighted": False,
        "sampler.name": "euler",
        "sampler.c": 1.0,
    },
    # VE-Karras: eps network in z = z0 + sigma eps, E||eps_theta - eps||^2, EDM's log-normal
    # noise levels; dz = -eps dsigma (Euler in sigma on the Karras grid).
    "ve_karras": {
        "diffusion.schedule": "ve",
        "diffusion.prediction": "eps",
        "loss.weighting": "eps",
        "loss.time_sampler": "lognormal",
        "loss.importance_weighted": False,
        "sampler.name": "euler",
        "sampler.c": 1.0,
    },
    # Rectified flow: velocity network v = eps - x0, E||eps - x0 - v_theta||^2, uniform s;
    # dr = -v ds with steps uniform in s.
    "rf": {
        "diffusion.schedule": "rf",
        "diffusion.prediction": "velocity",
        "loss.weighting": "velocity",
        "loss.time_sampler": "uniform",
        "loss.importance_weighted": False,
        "sampler.name": "euler",
        "sampler.c": 1.0,
        "sampler.grid": "uniform_t",
    },
}


def toy_config(dataset: str, row: str):
    config = _default["get_config"]()
    config.data.name = dataset
    for dotted, value in ROWS[row].items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config
