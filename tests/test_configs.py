"""Config files and their validation: every file parses; every bad value is named before compiling.

Config files are modules of the ``configs`` package, loaded by ``config_files.load_config(spec)``
(``spec`` as ``--config`` takes it, ``FILE.py[:ARG]``). Errors must name the key, the value and
the valid choices (or the valid range).
"""

import glob
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from configs import toy
from diffusion_lv import config_files
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.config_files import load_config
from diffusion_lv.experiment import ConfigError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The 2-D configs (image configs are tested with the image pipeline): one per toy set and row.
TOY_SPECS = [f"configs/toy.py:{dataset},{row}" for dataset in toy.DATASETS for row in toy.ROWS]
CONFIG_SPECS = ["configs/default.py", *TOY_SPECS]
# Every config file with a get_config (the toy file once per set and row above).
CONFIG_FILES = sorted(
    os.path.relpath(path, ROOT)
    for pattern in ("configs/**/*.py", "experiments/configs/*.py")
    for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    if not path.endswith(("__init__.py", "common.py"))
)


def load(relative: str):
    return load_config(os.path.join("configs", relative))


def test_there_is_a_config_per_toy_set_and_paper_row():
    assert toy.DATASETS == ("ring8", "checkerboard", "two_moons", "swiss_roll")
    assert set(toy.ROWS) == {"vp_sde", "vp_ode", "ve_karras", "rf"}
    assert len(TOY_SPECS) == 16
    for dataset in toy.DATASETS:
        for row in toy.ROWS:
            config = load(f"toy.py:{dataset},{row}")
            assert config.data.name == dataset
            assert config.diffusion.schedule == toy.ROWS[row]["diffusion.schedule"]
            # The SET_ROW name (the experiments' model_config) is the same config.
            assert load(f"toy.py:{dataset}_{row}") == config


@pytest.mark.parametrize("spec", CONFIG_SPECS)
def test_every_config_parses(spec):
    config = load_config(spec)
    experiment = parse(config, num_devices=1)
    assert experiment.training.num_steps > 0
    assert experiment.parameterization.prediction == config.diffusion.prediction


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_file_loads_from_anywhere(path, tmp_path, monkeypatch):
    """Relative to the working directory, absolute, or relative to the repository root."""
    config = load_config(path)
    assert config.to_json_best_effort()
    monkeypatch.chdir(tmp_path)
    assert load_config(os.path.join(ROOT, path)) == config
    assert load_config(path) == config


def test_toy_config_argument():
    assert load("toy.py") == load("toy.py:ring8,vp_sde") == load("toy.py:")
    assert toy.DEFAULT == "ring8,vp_sde"
    assert load("toy.py: two_moons , rf") == load("toy.py:two_moons,rf")
    for bad in ("ring9,vp_sde", "ring8,vp", "ring8", "ring8,vp_sde,rf", "ring8_vp"):
        with pytest.raises(ValueError) as err:
            load(f"toy.py:{bad}")
        message = str(err.value)
        assert repr(bad) in message
        for name in (*toy.DATASETS, *toy.ROWS):
            assert repr(name) in message, (name, message)


def flag_config(spec: str):
    """What main's ``--config=SPEC`` gives (ml_collections' loader, own flag registry)."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", config_files.DEFAULT_CONFIG, "",
                                    flag_values=flag_values)
    flag_values(["main", f"--config={spec}"])
    return flag_values.config


def test_config_flags_pass_the_argument():
    """main's --config: the text after ':' goes to get_config."""
    config = flag_config(os.path.join(ROOT, "configs/toy.py:swiss_roll,ve_karras"))
    assert config.is_locked  # --config's: no new keys
    assert config.to_dict() == load("toy.py:swiss_roll,ve_karras").to_dict()
    assert flag_config("configs/toy.py").to_dict() == load("toy.py:ring8,vp_sde").to_dict()
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"unknown toy config 'ring8,sde'.*'swiss_roll'"):
        flag_config(os.path.join(ROOT, "configs/toy.py:ring8,sde"))


def test_configs_are_a_package():
    from configs import default
    from configs.cifar10 import common as cifar10_common
    from configs.digits import common as digits_common
    from configs.mnist import common as mnist_common

    assert default.get_config() == load("default.py")
    assert digits_common.digits_config("rf") == load("digits/rf.py")
    assert mnist_common.mnist_config("edm_ve") == load("mnist/edm_ve.py")
    assert callable(cifar10_common.image_config)
    assert config_files.DEFAULT_CONFIG == os.path.join(ROOT, "configs", "default.py")
    # experiments/configs is a subpackage: the root above it is the repository's.
    split = os.path.join(ROOT, "experiments", "configs", "split.py")
    assert str(config_files.find_root(split)) == str(config_files.find_root()) == ROOT


def test_configs_importable_from_another_directory(tmp_path):
    """A fresh interpreter outside the checkout: main's call order, then load_config."""
    script = textwrap.dedent(f"""
        import sys
        from absl import flags
        from ml_collections import config_flags
        from diffusion_lv import config_files
        assert "configs" not in sys.modules
        config_files.make_configs_importable()
        config_flags.DEFINE_config_file("config", config_files.DEFAULT_CONFIG)
        flags.FLAGS(["main"])
        assert flags.FLAGS.config.data.name == "ring8"  # configs/default.py
        flags.FLAGS(["main", "--config=" + {os.path.join(ROOT, "configs", "mnist", "rf.py")!r}])
        config = flags.FLAGS.config
        assert config_files.load_config("configs/toy.py:checkerboard,rf").data.name == (
            "checkerboard")
        print(config.data.name, config.diffusion.schedule)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mnist", "rf"]


def test_rows_override_the_base():
    sde = parse(load("toy.py:ring8,vp_sde"), num_devices=1)
    ode = parse(load("toy.py:ring8,vp_ode"), num_devices=1)
    rf = parse(load("toy.py:two_moons,rf"), num_devices=1)
    assert sde.schedule.name == ode.schedule.name == "vp"
    assert sde.sampler.resolved_options["c"] == 2.0
    assert ode.sampler.name == "heun" and "c" not in ode.sampler.resolved_options  # no rate
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
    ("eval.nll_bound_times", 1, ["config.eval.nll_bound_times=1", "0 (no bound) or >= 2"]),
    ("eval.excess_examples", -1, ["config.eval.excess_examples=-1", ">= 0"]),
    ("eval.checkpoint_step", -1, ["config.eval.checkpoint_step=-1", ">= 0"]),
    ("inpaint.mask", "diagonal", ["config.inpaint.mask='diagonal'", "valid choices", "centre"]),
    # an image mask on 2-D data
    ("inpaint.mask", "centre", ["config.inpaint.mask='centre'", "valid choices", "left_half"]),
    ("inpaint.method", "guess", ["config.inpaint.method='guess'", "valid choices", "repaint"]),
    ("inpaint.resamples", 4, ["config.inpaint.resamples=4", "not read by method 'langevin'",
                              "langevin_steps"]),
    ("inpaint.langevin_steps", -1, ["config.inpaint.langevin_steps=-1", ">= 0"]),
    ("inpaint.nfe", 1, ["config.inpaint.nfe=1", "buys no step"]),
    ("inpaint.num_examples", 0, ["config.inpaint.num_examples=0", ">= 1"]),
    ("inpaint.method", "smc", ["config.inpaint", "particles=None", "completions per example"]),
]


@pytest.mark.parametrize("key,value,fragments", BAD_VALUES, ids=lambda v: str(v)[:30])
def test_bad_values_name_the_key_value_and_choices(key, value, fragments):
    config = load("toy.py:ring8,rf" if key == "diffusion.t_max" else "default.py")
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
    with pytest.raises(ConfigError, match=r"config.sampler.c=0.5 is not read by sampler 'heun'"):
        parse(config, num_devices=1)


def test_error_is_a_value_error():
    assert issubclass(experiment_lib.ConfigError, ValueError)
