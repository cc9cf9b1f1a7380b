"""Read an ml_collections config at the edge: validate it and build plain objects.

``parse(config, num_devices)`` checks every name and range *before anything compiles* and returns
an :class:`Experiment` of frozen dataclasses (schedule, parameterisation, loss, optimiser, loop,
sampler, evaluation). Errors are :class:`ConfigError` (a ``ValueError``) that name the key, the
value and the valid choices, e.g.
``config.diffusion.schedule='vpp' is not valid; valid choices: ['cosine_vp', 'linear_vp', ...]``.
The layout of the config is ``configs/default.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from diffusion_lv import convert, losses, samplers
from diffusion_lv import likelihood as likelihood_lib
from diffusion_lv.data import images, toy
from diffusion_lv.likelihood import LikelihoodConfig
from diffusion_lv.models import unet
from diffusion_lv.models.mlp import MLP
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import SCHEDULES, Schedule, get_schedule
from diffusion_lv.training.loop import TrainConfig
from diffusion_lv.training.state import LR_DECAYS, OPTIMIZERS, OptimizerConfig

MODELS = ("mlp", "unet")
IMAGE_MODELS = ("unet",)
IMAGE_SIGMA_DATA = 0.5  # EDM's sigma_data for images scaled to [-1, 1]
EVAL_PARAMS = ("ema", "raw")


class ConfigError(ValueError):
    """An invalid config value; the message names ``config.<key>``, the value and the choices."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 8192
    num_projections: int = 256
    repeats: int = 4
    params: str = "ema"  # "ema" (the first EMA decay unless ema_decay says which) or "raw"
    ema_decay: float | None = None
    nll_examples: int = 0  # 0: no NLL
    nll_batch_size: int = 256
    likelihood: LikelihoodConfig = LikelihoodConfig()  # solver, divergence, dequantisation
    checkpoint_step: int | None = None  # None: the latest
    seed: int = 0
    inception_weights: str = ""  # FID Inception weights file; "": no FID
    fid_reference: str = ""  # FID statistics .npz; "": computed from the data set, cached


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, as plain values (no ConfigDict below this point)."""

    dataset: str
    dataset_fn: Callable
    data_shape: tuple[int, ...]
    network: nn.Module
    parameterization: Parameterization
    loss: losses.LossConfig
    optimizer: OptimizerConfig
    training: TrainConfig
    sampler: samplers.SamplerConfig
    eval: EvalConfig
    image_data: images.ImageData | None = None  # image data sets: the pipeline's settings

    @property
    def schedule(self) -> Schedule:
        return self.parameterization.schedule

    def eval_params(self, state):
        """The params ``eval`` asks for from a train state (EMA by default)."""
        if self.eval.params == "raw":
            return state.params
        decays = self.training.ema_decays
        index = 0 if self.eval.ema_decay is None else decays.index(self.eval.ema_decay)
        return state.ema_params[index]


# -- checks ------------------------------------------------------------------------------------


def _get(config, key: str):
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError):
            raise ConfigError(f"config.{key} is missing") from None
    return node


def _choice(config, key: str, choices: Sequence[str]) -> str:
    value = _get(config, key)
    if value not in choices:
        raise ConfigError(
            f"config.{key}={value!r} is not valid; valid choices: {sorted(choices)}"
        )
    return value


def _number(config, key: str, *, lo=None, hi=None, lo_open=False, hi_open=False,
            integer=False, optional=False):
    """A number in ``[lo, hi]`` (open ends where asked); None allowed when ``optional``."""
    value = _get(config, key)
    if value is None and optional:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) if integer else math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        kind = "an integer" if integer else "a finite number"
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        bounds = " and ".join(b for b in (left, right) if b)
        valid = f"{kind}{' ' + bounds if bounds else ''}{' or None' if optional else ''}"
        raise ConfigError(f"config.{key}={value!r} is not valid; valid: {valid}")
    return value


def _wrap(key: str, build: Callable):
    """Build an object, re-raising its ValueError with the config key in front."""
    try:
        return build()
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"config.{key}: {err}") from None


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


def _loss(config, parameterization: Parameterization) -> losses.LossConfig:
    weighting = _choice(config, "loss.weighting", losses.WEIGHTINGS)
    sampler_name = _choice(config, "loss.time_sampler", losses.TIME_SAMPLERS)
    p_mean = _number(config, "loss.p_mean")
    p_std = _number(config, "loss.p_std", lo=0.0, lo_open=True)
    time_sampler = losses.TimeSampler(sampler_name, p_mean, p_std, parameterization.sigma_data)
    return losses.LossConfig(
        prediction=parameterization.prediction,
        weighting=weighting,
        time_sampler=time_sampler,
        importance_weighted=bool(_get(config, "loss.importance_weighted")),
        sigma_data=parameterization.sigma_data,
    )


def _optimizer(config, num_steps: int) -> OptimizerConfig:
    name = _choice(config, "optimizer.name", OPTIMIZERS)
    decay = _choice(config, "optimizer.decay", LR_DECAYS)
    warmup = _number(config, "optimizer.warmup_steps", lo=0, integer=True)
    decay_steps = _number(config, "optimizer.decay_steps", lo=1, integer=True, optional=True)
    return OptimizerConfig(
        name=name,
        learning_rate=_number(config, "optimizer.learning_rate", lo=0.0, lo_open=True),
        warmup_steps=warmup,
        decay=decay,
        decay_steps=max(num_steps - warmup, 1) if decay_steps is None else decay_steps,
        final_lr_fraction=_number(config, "optimizer.final_lr_fraction", lo=0.0, hi=1.0),
        weight_decay=_number(config, "optimizer.weight_decay", lo=0.0),
        b1=_number(config, "optimizer.b1", lo=0.0, hi=1.0, hi_open=True),
        b2=_number(config, "optimizer.b2", lo=0.0, hi=1.0, hi_open=True),
        eps=_number(config, "optimizer.eps", lo=0.0),
        grad_clip=_number(config, "optimizer.grad_clip", lo=0.0),
    )


def _training(config, num_devices: int) -> TrainConfig:
    batch = _number(config, "training.batch_size", lo=1, integer=True)
    if batch % num_devices:
        raise ConfigError(
            f"config.training.batch_size={batch!r} is not divisible by the number of devices "
            f"({num_devices}); valid: a multiple of {num_devices}"
        )
    decays = tuple(_get(config, "training.ema_decays"))
    if not decays or not all(
        isinstance(d, int | float) and not isinstance(d, bool) and 0.0 <= d < 1.0 for d in decays
    ):
        raise ConfigError(
            f"config.training.ema_decays={decays!r} is not valid; valid: a non-empty tuple of "
            "numbers in [0, 1)"
        )
    edges = tuple(_get(config, "training.bucket_edges"))
    if not all(isinstance(e, int | float) and e > 0 for e in edges) or list(edges) != sorted(
        set(edges)
    ):
        raise ConfigError(
            f"config.training.bucket_edges={edges!r} is not valid; valid: strictly increasing "
            "positive noise levels sigma_ve"
        )
    return TrainConfig(
        batch_size=batch,
        num_steps=_number(config, "training.num_steps", lo=1, integer=True),
        steps_per_call=_number(config, "training.steps_per_call", lo=1, integer=True),
        log_every=_number(config, "training.log_every", lo=1, integer=True),
        checkpoint_every=_number(config, "training.checkpoint_every", lo=0, integer=True),
        keep_checkpoints=_number(config, "training.keep_checkpoints", lo=1, integer=True),
        sample_every=_number(config, "training.sample_every", lo=0, integer=True),
        ema_decays=tuple(float(d) for d in decays),
        seed=_number(config, "seed", integer=True),
        bucket_edges=tuple(float(e) for e in edges),
        unroll_steps=bool(_get(config, "training").get("unroll_steps", False)),
    )


def _sampler(config, schedule: Schedule) -> samplers.SamplerConfig:
    _choice(config, "sampler.name", samplers.SAMPLERS)
    _choice(config, "sampler.grid", samplers.GRIDS)
    _number(config, "sampler.nfe", lo=1, integer=True)
    lo, hi = schedule.sigma_ve_min, schedule.sigma_ve_max
    sigma_min = _number(config, "sampler.sigma_min", lo=0.0, lo_open=True, optional=True)
    sigma_max = _number(config, "sampler.sigma_max", lo=0.0, lo_open=True, optional=True)
    resolved_min = lo if sigma_min is None else sigma_min
    resolved_max = hi if sigma_max is None else sigma_max
    if not resolved_min < resolved_max:
        raise ConfigError(
            f"config.sampler.sigma_min={resolved_min!r} must be < config.sampler.sigma_max="
            f"{resolved_max!r}"
        )
    for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None and not lo * (1 - 1e-6) <= value <= hi * (1 + 1e-6):
            raise ConfigError(
                f"config.sampler.{key}={value!r} is outside the schedule's noise range; valid: "
                f"[{lo:.6g}, {hi:.6g}] (sigma_ve of {schedule.describe()})"
            )
    fields = {f.name for f in dataclasses.fields(samplers.SamplerConfig)}
    values = dict(_get(config, "sampler"))
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"config.sampler has unknown keys {unknown}; valid: {sorted(fields)}")
    return _wrap("sampler", lambda: samplers.SamplerConfig(**values))


def _eval(config, ema_decays: tuple[float, ...], image_data: images.ImageData | None) -> EvalConfig:
    params = _choice(config, "eval.params", EVAL_PARAMS)
    ema_decay = _number(config, "eval.ema_decay", optional=True)
    if ema_decay is not None and ema_decay not in ema_decays:
        raise ConfigError(
            f"config.eval.ema_decay={ema_decay!r} is not one of the trained EMA decays; "
            f"valid choices: {list(ema_decays)}"
        )
    return EvalConfig(
        num_samples=_number(config, "eval.num_samples", lo=2, integer=True),
        num_projections=_number(config, "eval.num_projections", lo=1, integer=True),
        repeats=_number(config, "eval.repeats", lo=1, integer=True),
        params=params,
        ema_decay=ema_decay,
        nll_examples=_number(config, "eval.nll_examples", lo=0, integer=True),
        nll_batch_size=_number(config, "eval.nll_batch_size", lo=1, integer=True),
        likelihood=_likelihood(config, image_data),
        checkpoint_step=_number(config, "eval.checkpoint_step", lo=0, integer=True,
                                optional=True),
        seed=_number(config, "eval.seed", integer=True),
        **_fid_files(config, image_data),
    )


def _fid_files(config, image_data) -> dict:
    """``eval.inception_weights`` / ``eval.fid_reference``: files that exist, image data only."""
    from diffusion_lv.eval import fid, inception

    how = {
        "inception_weights": f"download {inception.WEIGHTS_FILE} from pytorch-fid's GitHub "
        f"releases ({inception.WEIGHTS_URL}) and pass its path",
        "fid_reference": "pass a pytorch-fid statistics .npz (keys mu, sigma), or '' to compute "
        "the statistics from the data set",
    }
    files = {}
    for name, instructions in how.items():
        path = _get(config, f"eval.{name}")
        if not isinstance(path, str):
            raise ConfigError(f"config.eval.{name}={path!r} is not valid; valid: a path or ''")
        if path and image_data is None:
            raise ConfigError(
                f"config.eval.{name}={path!r}: FID is for image data sets; "
                f"config.data.name is a 2-D set (valid: '' or an image data set)"
            )
        if path and not os.path.isfile(path):
            raise ConfigError(f"config.eval.{name}={path!r} does not exist: {instructions}")
        files[name] = path
    if files["fid_reference"]:
        if not files["inception_weights"]:
            raise ConfigError(
                "config.eval.fid_reference is set but config.eval.inception_weights is '': "
                f"FID needs the weights ({how['inception_weights']})"
            )
        _wrap("eval.fid_reference", lambda: fid.load_stats(files["fid_reference"]))
    return files


def _likelihood(config, image_data) -> LikelihoodConfig:
    """The NLL solver's settings; image data are dequantised to their number of levels.

    ``sigma_data`` is left out: ``evaluate.evaluate_nll`` takes the model's own."""
    divergence = _choice(config, "eval.nll_divergence", likelihood_lib.DIVERGENCES)
    return _wrap("eval", lambda: LikelihoodConfig(
        divergence=divergence,
        num_probes=_number(config, "eval.nll_num_probes", lo=1, integer=True),
        rtol=_number(config, "eval.nll_rtol", lo=0.0, lo_open=True),
        atol=_number(config, "eval.nll_atol", lo=0.0, lo_open=True),
        num_levels=None if image_data is None else image_data.info.num_levels,
    ))


def _network(config) -> nn.Module:
    name = _choice(config, "model.name", MODELS)
    if name == "unet":
        options = {k: v for k, v in _get(config, "model").items() if k != "name"}
        return _wrap("model", lambda: unet.make_unet(**options))
    return MLP(
        width=_number(config, "model.width", lo=1, integer=True),
        num_blocks=_number(config, "model.num_blocks", lo=0, integer=True),
        expansion=_number(config, "model.expansion", lo=1, integer=True),
        embedding_features=_number(config, "model.embedding_features", lo=2, integer=True),
        max_frequency=_number(config, "model.max_frequency", lo=0.0, lo_open=True),
    )


def parse(config, num_devices: int | None = None) -> Experiment:
    """Validate ``config`` and build the experiment; raises :class:`ConfigError` on bad input."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    dataset = _choice(config, "data.name", (*toy.DATASETS, *images.IMAGE_DATASETS))
    image_data = _image_data(config, dataset)
    schedule = _schedule(config)
    network = _network(config)
    parameterization = _parameterization(config, schedule, dataset)
    loss = _loss(config, parameterization)
    training = _training(config, num_devices)
    return Experiment(
        dataset=dataset,
        dataset_fn=toy.get_dataset(dataset) if image_data is None else image_data.examples_fn,
        data_shape=(2,) if image_data is None else image_data.data_shape,
        network=network,
        parameterization=parameterization,
        loss=loss,
        optimizer=_optimizer(config, training.num_steps),
        training=training,
        sampler=_sampler(config, schedule),
        eval=_eval(config, training.ema_decays, image_data),
        image_data=image_data,
    )


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
