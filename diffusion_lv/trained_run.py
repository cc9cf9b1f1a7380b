"""A trained run from Python: ``load_run(workdir)`` gives its model, parameters and samplers.

    run = diffusion_lv.load_run("runs/quickstart")          # the latest checkpoint, EMA params
    x = run.sample(jax.random.PRNGKey(0), 1000, sampler="dpmpp_3m", nfe=20)

The run's recorded ``config.json`` says what the model is (the workdir is the source of truth,
as for ``--mode=eval``); nothing is written to the workdir.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from ml_collections import config_dict

from diffusion_lv import experiment as experiment_lib
from diffusion_lv import run_dir, samplers
from diffusion_lv.evaluate import make_sampler, restore_checkpoint
from diffusion_lv.parameterization import Parameterization, bind


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A restored run: ``model`` (how the network's output is read), ``params`` (the chosen EMA
    or raw parameters), ``model_fn`` (``(x, t) -> output``, what samplers and the likelihood
    take), ``step``, the recorded ``config`` and the parsed ``experiment``."""

    workdir: str
    config: config_dict.ConfigDict
    experiment: experiment_lib.Experiment
    state: object  # the restored TrainState

    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def model(self) -> Parameterization:
        return self.experiment.parameterization

    @property
    def params(self):
        return self.experiment.eval_params(self.state)

    @property
    def model_fn(self) -> Callable:
        return self.model.model_fn(bind(self.experiment.network.apply, self.params))

    def sampler_config(self, sampler: str | None = None, nfe: int | None = None,
                       **options) -> samplers.SamplerConfig:
        """The run's sampler (its config's ``sampler`` section) with ``nfe`` and ``options``
        changed, or, when ``sampler`` names one, that sampler with its defaults and ``options``;
        checked against the run's schedule."""
        if sampler is None:
            config = dataclasses.replace(self.experiment.sampler,
                                         nfe=nfe or self.experiment.sampler.nfe, **options)
        else:
            config = samplers.SamplerConfig(name=sampler, nfe=nfe or self.experiment.sampler.nfe,
                                            **options)
        config.sigma_range(self.model.schedule)
        return config

    def sample(self, key: jax.Array, num: int, sampler: str | None = None,
               nfe: int | None = None, **options) -> jax.Array:
        """``num`` samples of shape ``(num, *data_shape)`` from one compiled program (compiled
        once per sampler setting and ``num``)."""
        config = self.sampler_config(sampler, nfe, **options)
        draw = make_sampler(self.experiment.network.apply, self.model, config,
                            (num, *self.experiment.data_shape))
        return draw(self.params, key)[0]


def load_run(workdir: str, step: int | None = None, params: str = "ema",
             ema_decay: float | None = None) -> TrainedRun:
    """The run in ``workdir`` at checkpoint ``step`` (None: the latest) with its ``params``
    ("ema": the first EMA decay unless ``ema_decay`` names another; "raw"). Errors name the saved
    steps, the valid params and the trained decays before anything is restored."""
    recorded = run_dir.read_config(workdir)
    if recorded is None:
        raise FileNotFoundError(
            f"{workdir} has no {run_dir.CONFIG_FILE}: not a run directory (train there first)"
        )
    config = config_dict.ConfigDict(recorded.to_dict())
    with config.unlocked():
        config.eval.checkpoint_step = step
        config.eval.params = params
        config.eval.ema_decay = ema_decay
    experiment = experiment_lib.parse(config)
    return TrainedRun(workdir, config, experiment, restore_checkpoint(experiment, workdir))
