"""Config files and their validation: every file parses; every bad value is named before compiling.

Errors must name the key, the value and the valid choices (or the valid range).
"""

import glob
import os
import runpy

import pytest

from diffusion_lv import experiment as experiment_lib
from diffusion_lv.experiment import ConfigError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The 2-D configs (image configs are tested with the image pipeline).
CONFIG_FILES = sorted(
    path
    for path in [os.path.join(ROOT, "configs", "default.py"),
                 *glob.glob(os.path.join(ROOT, "configs", "toy", "*.py"))]
    if "get_config" in runpy.run_path(path)
)


def load(relative: str):
    return runpy.run_path(os.path.join(ROOT, "configs", relative))["get_config"]()


def test_there_is_a_config_per_toy_set_and_paper_row():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIG_FILES}
    assert "default.py" in names
    for dataset in ("ring8", "checkerboard", "two_moons", "swiss_roll"):
        for row in ("vp_sde", "vp_ode", "ve_karras", "rf"):
            assert os.path.join("toy", f"{dataset}_{row}.py") in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses(path):
    config = runpy.run_path(path)["get_config"]()
    experiment = parse(config, num_devices=1)
    assert experiment.training.num_steps > 0
    assert experiment.parameterization.prediction == config.diffusion.prediction


def test_rows_override_the_base():
    sde = parse(load("toy/ring8_vp_sde.py"), num_devices=1)
    ode = parse(load("toy/ring8_vp_ode.py"), num_devices=1)
    rf = parse(load("toy/two_moons_rf.py"), num_devices=1)
    assert sde.schedule.name == ode.schedule.name == "vp"
    assert sde.sampler.rate == 2.0 and ode.sampler.rate == 1.0
    assert sde.loss == ode.loss  # the same model and loss; only the sampler differs
    assert rf.schedule.name == "rf" and rf.dataset == "two_moons"
    assert rf.parameterization.prediction == "velocity"


def test_defaults_resolved_from_the_data_and_the_run_length():
    experiment = parse(load("default.py"), num_devices=1)
    assert experiment.parameterization.sigma_data == pytest.approx(1.4177, rel=1e-3)
    config = load("default.py")
    config.training.num_steps = 500
    optimizer = parse(config, num_devices=1).optimizer
    assert optimizer.decay_steps == 500 - optimizer.warmup_steps


BAD_VALUES = [
    # (key, value, fragments the message must contain)
    ("data.name", "spirals", ["config.data.name='spirals'", "valid choices", "ring8"]),
    ("model.name", "unet", ["config.model.name='unet'", "valid choices", "mlp"]),
    ("diffusion.schedule", "vpp", ["config.diffusion.schedule='vpp'", "valid choices", "'ve'"]),
    ("diffusion.prediction", "noise", ["config.diffusion.prediction='noise'", "velocity"]),
    ("loss.weighting", "snr", ["config.loss.weighting='snr'", "valid choices", "'ml'"]),
    ("loss.time_sampler", "beta", ["config.loss.time_sampler='beta'", "lognormal"]),
    ("optimizer.name", "lion", ["config.optimizer.name='lion'", "adamw"]),
    ("optimizer.decay", "step", ["config.optimizer.decay='step'", "cosine"]),
    ("sampler.name", "rk17", ["config.sampler.name='rk17'", "valid choices", "euler"]),
    ("sampler.grid", "cosine", ["config.sampler.grid='cosine'", "karras"]),
    ("eval.params", "best", ["config.eval.params='best'", "ema"]),
    ("training.num_steps", 0, ["config.training.num_steps=0", ">= 1"]),
    ("training.num_steps", -5, ["config.training.num_steps=-5", ">= 1"]),
    ("training.steps_per_call", 0, ["config.training.steps_per_call=0", ">= 1"]),
    ("training.batch_size", 0, ["config.training.batch_size=0", ">= 1"]),
    ("sampler.nfe", 0, ["config.sampler.nfe=0", ">= 1"]),
    ("optimizer.learning_rate", -1e-3, ["config.optimizer.learning_rate=-0.001", "> 0.0"]),
    ("optimizer.b2", 1.0, ["config.optimizer.b2=1.0", "< 1.0"]),
    ("training.ema_decays", (0.9, 1.5), ["config.training.ema_decays=(0.9, 1.5)", "[0, 1)"]),
    ("training.bucket_edges", (1.0, 0.1), ["config.training.bucket_edges", "increasing"]),
    ("diffusion.sigma_data", -1.0, ["config.diffusion.sigma_data=-1.0", "> 0.0"]),
    ("diffusion.t_max", 2.0, ["config.diffusion", "t_max=2.0"]),  # beyond RF's end s=1
    ("sampler.sigma_max", 500.0, ["config.sampler.sigma_max=500.0", "outside", "80"]),
    ("eval.ema_decay", 0.5, ["config.eval.ema_decay=0.5", "valid choices"]),
    ("eval.nll_divergence", "trace", ["config.eval.nll_divergence='trace'", "hutchinson"]),
    ("eval.nll_rtol", 0.0, ["config.eval.nll_rtol=0.0", "> 0.0"]),
    ("eval.nll_batch_size", 0, ["config.eval.nll_batch_size=0", ">= 1"]),
    ("eval.checkpoint_step", -1, ["config.eval.checkpoint_step=-1", ">= 0"]),
]


@pytest.mark.parametrize("key,value,fragments", BAD_VALUES, ids=lambda v: str(v)[:30])
def test_bad_values_name_the_key_value_and_choices(key, value, fragments):
    config = load("toy/ring8_rf.py" if key == "diffusion.t_max" else "default.py")
    section, name = key.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(ConfigError) as err:
        parse(config, num_devices=1)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_sigma_min_not_below_sigma_max():
    config = load("default.py")
    config.sampler.sigma_min = 10.0
    config.sampler.sigma_max = 1.0
    with pytest.raises(ConfigError, match=r"sigma_min=10.0 must be < config.sampler.sigma_max=1.0"):
        parse(config, num_devices=1)
    config.sampler.sigma_max = 10.0
    with pytest.raises(ConfigError, match="sigma_min=10.0 must be <"):
        parse(config, num_devices=1)


def test_batch_must_divide_over_devices():
    config = load("default.py")
    config.training.batch_size = 12
    with pytest.raises(ConfigError, match=r"batch_size=12 is not divisible .*\(8\).*multiple of 8"):
        parse(config, num_devices=8)
    parse(config, num_devices=4)


def test_sampler_rejects_a_rate_it_has_not():
    config = load("default.py")
    config.sampler.c = 0.5
    with pytest.raises(ConfigError, match=r"config.sampler: .*c=0.5"):
        parse(config, num_devices=1)


def test_error_is_a_value_error():
    assert issubclass(experiment_lib.ConfigError, ValueError)
