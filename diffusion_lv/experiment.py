"""The composition root: ``parse(config) -> Experiment`` reads an ml_collections config once.

Every check happens *before anything compiles*. The settings dataclasses own their ranges (their
errors start with ``field=value``); this module only reads the config, builds them and puts
``config.<section>.`` in front of their errors, so a bad value is named by its config key, e.g.
``config.training.batch_size=0 is not valid; valid: an integer >= 1``. Nothing below this module
reads a ConfigDict. The layout of the config is ``configs/default.py``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

import flax.linen as nn
import jax

from diffusion_lv import checks, conditional, convert, losses, samplers
from diffusion_lv import likelihood as likelihood_lib
from diffusion_lv.config_schema import ConfigError, check_keys
from diffusion_lv.data import images, toy
from diffusion_lv.eval.config import EvalConfig
from diffusion_lv.eval.images import ImageEvaluator
from diffusion_lv.eval.inpaint import InpaintConfig
from diffusion_lv.eval.toy import ToyEvaluator
from diffusion_lv.models import unet
from diffusion_lv.models.mlp import MLP
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import SCHEDULES, Schedule, get_schedule
from diffusion_lv.training import check_batch_divisible
from diffusion_lv.training.loop import TrainConfig
from diffusion_lv.training.state import OptimizerConfig

MODELS = ("mlp", "unet")
IMAGE_MODELS = ("unet",)
IMAGE_SIGMA_DATA = 0.5  # EDM's sigma_data for images scaled to [-1, 1]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, as plain values (no ConfigDict below this point)."""

    dataset: str
    dataset_fn: Callable | None  # on-device batches of a 2-D set; None for image data
    data_shape: tuple[int, ...]
    network: nn.Module
    parameterization: Parameterization
    loss: losses.LossConfig
    optimizer: OptimizerConfig
    training: TrainConfig
    sampler: samplers.SamplerConfig
    eval: EvalConfig
    evaluator: ToyEvaluator | ImageEvaluator  # picked once: samples, metrics, pictures
    image_data: images.ImageData | None = None  # image data sets: the pipeline's settings
    inpaint: InpaintConfig = InpaintConfig()  # --mode=inpaint

    @property
    def schedule(self) -> Schedule:
        return self.parameterization.schedule

    @property
    def make_batches(self) -> Callable | None:
        """The training loop's batch source for image data (None: on-device ``dataset_fn``)."""
        return None if self.image_data is None else self.image_data.step_batches

    def eval_params(self, state):
        """The params ``eval`` asks for from a train state (EMA by default)."""
        if self.eval.params == "raw":
            return state.params
        decays = self.training.ema_decays
        index = 0 if self.eval.ema_decay is None else decays.index(self.eval.ema_decay)
        return state.ema_params[index]


# -- reading the config ------------------------------------------------------------------------


def _get(config, key: str):
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError):
            raise ConfigError(f"config.{key} is missing") from None
    return node


def _section(config, section: str, drop=()) -> dict:
    return {k: v for k, v in _get(config, section).items() if k not in drop}


def _wrap(section: str, build: Callable, rename: dict[str, str] | None = None):
    """``build()``, its ValueError re-raised with config keys: each ``field=`` of the message
    becomes ``config.<section>.<key>=`` (``rename`` maps fields to keys where they differ);
    a message naming no field gets ``config.<section>: `` in front."""
    try:
        return build()
    except ConfigError:
        raise
    except ValueError as err:
        message, rename = str(err), rename or {}

        prefix = f"config.{section}." if section else "config."

        def key(match):
            field = match.group(1)
            return f"{prefix}{rename.get(field, field)}="

        # Not inside a value's repr such as ``VEKarras(t_min=0.002, t_max=80.0)``.
        named, count = re.subn(r"(?<![\w.'\"(])(?<!, )([a-z_][a-z0-9_]*)=", key, message)
        raise ConfigError(named if count else f"config.{section}: {message}") from None


def _build(section: str, cls, options: dict, **extra):
    """``cls(**options, **extra)``: a key the dataclass does not have is named with the valid
    keys; its own checks' errors are named by ``_wrap``."""
    fields = {f.name for f in dataclasses.fields(cls)} - set(extra)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"config.{section} has unknown keys {unknown}; valid: {sorted(fields)}")
    return _wrap(section, lambda: cls(**options, **extra))


def _choice(config, key: str, choices) -> str:
    section, _, field = key.rpartition(".")
    return _wrap(section, lambda: checks.choice(field, _get(config, key), choices))


def _number(config, key: str, **bounds):
    section, _, field = key.rpartition(".")
    return _wrap(section, lambda: checks.number(field, _get(config, key), **bounds))


# -- sections ----------------------------------------------------------------------------------


def _schedule(config) -> Schedule:
    name = _choice(config, "diffusion.schedule", SCHEDULES)
    kwargs = {}
    for key in ("t_min", "t_max"):
        value = _number(config, f"diffusion.{key}", lo=0.0, lo_open=True, optional=True)
        if value is not None:
            kwargs[key] = value
    return _wrap("diffusion", lambda: get_schedule(name, **kwargs))


def _parameterization(config, schedule: Schedule, dataset: str) -> Parameterization:
    prediction = _choice(config, "diffusion.prediction", convert.PREDICTIONS)
    sigma_data = _number(config, "diffusion.sigma_data", lo=0.0, lo_open=True, optional=True)
    if sigma_data is None:
        images_ = dataset in images.IMAGE_DATASETS
        sigma_data = IMAGE_SIGMA_DATA if images_ else toy.data_std(dataset)
    return Parameterization(
        schedule, prediction, float(sigma_data), bool(_get(config, "diffusion.scale_input"))
    )


def _loss(config) -> losses.LossConfig:
    sampler = _wrap("loss", lambda: losses.TimeSampler(
        _get(config, "loss.time_sampler"), _get(config, "loss.p_mean"), _get(config, "loss.p_std")
    ), {"name": "time_sampler"})
    return _wrap("loss", lambda: losses.LossConfig(
        weighting=_get(config, "loss.weighting"), time_sampler=sampler,
        importance_weighted=bool(_get(config, "loss.importance_weighted")),
    ))


def _optimizer(config, num_steps: int) -> OptimizerConfig:
    _number(config, "optimizer.decay_steps", lo=1, integer=True, optional=True)
    options = _section(config, "optimizer")
    if options.get("decay_steps") is None:  # None: decay to the last step
        warmup = options.get("warmup_steps")
        if isinstance(warmup, int):
            options["decay_steps"] = max(num_steps - warmup, 1)
    return _build("optimizer", OptimizerConfig, options)


def _training(config, num_devices: int) -> TrainConfig:
    seed = _wrap("", lambda: checks.number("seed", _get(config, "seed"), integer=True))
    options = _section(config, "training")
    for key in ("ema_decays", "bucket_edges"):
        if isinstance(options.get(key), list | tuple):
            options[key] = tuple(options[key])
    training = _build("training", TrainConfig, options, seed=seed)
    _wrap("training", lambda: check_batch_divisible(training.batch_size, num_devices))
    return training


def _sampler(config, schedule: Schedule) -> samplers.SamplerConfig:
    values = _section(config, "sampler")
    unknown = sorted(set(values) - set(samplers.CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"config.sampler has unknown keys {unknown}; valid: {sorted(samplers.CONFIG_KEYS)}"
        )
    sampler = _wrap("sampler", lambda: samplers.SamplerConfig(**values))
    _wrap("sampler", lambda: sampler.sigma_range(schedule))
    return sampler


# config.eval keys of the likelihood solver, by LikelihoodConfig field
_LIKELIHOOD_KEYS = {"divergence": "nll_divergence", "num_probes": "nll_num_probes",
                    "rtol": "nll_rtol", "atol": "nll_atol"}


def _dequantization(config, image_data) -> str:
    """Discrete data are scored by the convention that matches how they were trained ("auto");
    naming the other one is refused (likelihood.matched_dequantization). Continuous data have
    none: the key is only checked."""
    requested = _get(config, "eval.nll_dequantization")
    if image_data is None:
        checks.choice("dequantization", requested, ("auto", *likelihood_lib.DEQUANTIZATIONS))
        return "uniform"
    return likelihood_lib.matched_dequantization(image_data.dequantize, requested)


def _eval(config, ema_decays: tuple[float, ...], image_data) -> EvalConfig:
    options = _section(config, "eval", drop=(*_LIKELIHOOD_KEYS.values(), "nll_dequantization"))
    dequantization = _wrap("eval", lambda: _dequantization(config, image_data),
                           {"dequantization": "nll_dequantization"})
    likelihood = _wrap("eval", lambda: likelihood_lib.LikelihoodConfig(
        **{field: _get(config, f"eval.{key}") for field, key in _LIKELIHOOD_KEYS.items()},
        num_levels=None if image_data is None else image_data.info.num_levels,
        dequantization=dequantization,
    ), _LIKELIHOOD_KEYS)
    evaluation = _build("eval", EvalConfig, options, likelihood=likelihood)
    if evaluation.ema_decay is not None and evaluation.ema_decay not in ema_decays:
        raise ConfigError(
            f"config.eval.ema_decay={evaluation.ema_decay!r} is not one of the trained EMA "
            f"decays; valid choices: {list(ema_decays)}"
        )
    _check_fid_files(evaluation, image_data)
    return evaluation


# config.inpaint keys that are not the conditional method's settings
_INPAINT_KEYS = ("mask", "num_examples")


def _inpaint(config, data_shape: tuple[int, ...], schedule: Schedule) -> InpaintConfig:
    """``config.inpaint``: the mask and a ``ConditionalConfig`` of the method and the options
    set (None keys are the method's defaults; a set option the method does not read is refused,
    naming the method's options). A run recorded before the section existed gets the defaults."""
    if "inpaint" not in config:
        return InpaintConfig()
    values = {k: v for k, v in _section(config, "inpaint").items() if v is not None}
    settings = {k: values.pop(k) for k in _INPAINT_KEYS if k in values}
    method = values.get("method", "langevin")
    known = {f.name for f in dataclasses.fields(conditional.ConditionalConfig)} - {"options"}
    readable = known | set(conditional.METHODS.get(method, conditional.METHODS["langevin"])
                           .options)
    unknown = sorted(set(values) - known - {k for m in conditional.METHODS.values()
                                            for k in m.options})
    if unknown:
        raise ConfigError(f"config.inpaint has unknown keys {unknown}; valid: "
                          f"{sorted(readable | set(_INPAINT_KEYS))}")
    cfg = _wrap("inpaint", lambda: conditional.ConditionalConfig(**values))
    spec = _wrap("inpaint", lambda: InpaintConfig(**settings, conditional=cfg))
    _wrap("inpaint", lambda: spec.check_data(data_shape))
    _wrap("inpaint", lambda: cfg.sigmas(schedule))  # a budget that buys a step, a valid range
    return spec


def _check_fid_files(evaluation: EvalConfig, image_data) -> None:
    """``eval.inception_weights`` / ``eval.fid_reference``: files that exist, image data only."""
    from diffusion_lv.eval import fid, inception

    how = {
        "inception_weights": f"download {inception.WEIGHTS_FILE} from pytorch-fid's GitHub "
        f"releases ({inception.WEIGHTS_URL}) and pass its path",
        "fid_reference": "pass a pytorch-fid statistics .npz (keys mu, sigma), or '' to compute "
        "the statistics from the data set",
    }
    for name, instructions in how.items():
        path = getattr(evaluation, name)
        if path and image_data is None:
            raise ConfigError(
                f"config.eval.{name}={path!r}: FID is for image data sets; "
                f"config.data.name is a 2-D set (valid: '' or an image data set)"
            )
        if path and not os.path.isfile(path):
            raise ConfigError(f"config.eval.{name}={path!r} does not exist: {instructions}")
    if evaluation.fid_reference:
        if not evaluation.inception_weights:
            raise ConfigError(
                "config.eval.fid_reference is set but config.eval.inception_weights is '': "
                f"FID needs the weights ({how['inception_weights']})"
            )
        _wrap("eval.fid_reference", lambda: fid.load_stats(evaluation.fid_reference))


def _network(config) -> nn.Module:
    name = _choice(config, "model.name", MODELS)
    options = _section(config, "model", drop=("name",))
    if name == "unet":
        return _wrap("model", lambda: unet.make_unet(**options))
    bounds = {"width": {"lo": 1}, "num_blocks": {"lo": 0}, "expansion": {"lo": 1},
              "embedding_features": {"lo": 2}}
    for key, bound in bounds.items():
        _number(config, f"model.{key}", integer=True, **bound)
    _number(config, "model.max_frequency", lo=0.0, lo_open=True)
    return MLP(**{key: options[key] for key in (*bounds, "max_frequency")})


def _image_data(config, dataset: str) -> images.ImageData | None:
    """The image pipeline's settings (``data.*``), or None for the toy sets; checks the model."""
    model = _get(config, "model.name")
    if dataset not in images.IMAGE_DATASETS:
        if model in IMAGE_MODELS:
            raise ConfigError(
                f"config.model.name={model!r} needs image data; config.data.name={dataset!r} is "
                f"a 2-D set: valid choices for it: {sorted(set(MODELS) - set(IMAGE_MODELS))}"
            )
        return None
    if model not in IMAGE_MODELS:
        raise ConfigError(
            f"config.model.name={model!r} cannot model images (config.data.name={dataset!r}); "
            f"valid choices: {list(IMAGE_MODELS)}"
        )
    options = {k: v for k, v in _get(config, "data").items() if k != "name"}
    return _wrap("data", lambda: images.ImageData.from_options({"name": dataset, **options}))


def parse(config, num_devices: int | None = None) -> Experiment:
    """Validate ``config`` and build the experiment; raises :class:`ConfigError` on bad input."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    dataset = _choice(config, "data.name", (*toy.DATASETS, *images.IMAGE_DATASETS))
    image_data = _image_data(config, dataset)  # a network that does not fit the data first
    check_keys(config)
    schedule = _schedule(config)
    network = _network(config)
    parameterization = _parameterization(config, schedule, dataset)
    loss = _loss(config)
    training = _training(config, num_devices)
    evaluation = _eval(config, training.ema_decays, image_data)
    return Experiment(
        dataset=dataset,
        dataset_fn=toy.get_dataset(dataset) if image_data is None else None,
        data_shape=(2,) if image_data is None else image_data.data_shape,
        network=network,
        parameterization=parameterization,
        loss=loss,
        optimizer=_optimizer(config, training.num_steps),
        training=training,
        sampler=_sampler(config, schedule),
        eval=evaluation,
        evaluator=ToyEvaluator(dataset, evaluation) if image_data is None
        else ImageEvaluator(image_data, evaluation),
        image_data=image_data,
        inpaint=_inpaint(config, (2,) if image_data is None else image_data.data_shape,
                         schedule),
    )
