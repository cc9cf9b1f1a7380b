"""What a run does after (and while) training: sample, measure, write, through one evaluator.

``experiment.evaluator`` (eval/toy.py or eval/images.py, picked once by experiment.py) knows the
data set: which pictures to draw, which distances to compute, which held-out data to score. This
module only strings the steps together:

* ``restore_checkpoint``: the train state of a run directory (the latest or a chosen step);
* ``make_sampler``: one jitted ``(params, key) -> (samples, nfe)`` per model, sampler and shape;
* ``write_samples`` / ``write_metrics``: ``samples.npy``, pictures and ``metrics.json``;
* ``held_out_nll``: the probability-flow NLL of held-out data and the reverse-SDE model's
  bound on it (eval/nll.py);
* ``objective_excess``: ``J(theta) - J*``, where the data have an exact denoiser;
* ``write_inpainting``: ``--mode=inpaint``, held-out examples completed by a conditional
  sampler (eval/inpaint.py), their picture and ``metrics.json``;
* ``periodic_sampler``: the every-``sample_every``-steps pictures during training;
* ``output_folder`` / ``record_eval``: where ``eval``/``sample`` write (their own folder per
  step, sampler, NFE and params, never over training's record) and the history of every
  evaluation (``metrics_history.jsonl``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from diffusion_lv import distributed, likelihood_bound, progress, samplers, training
from diffusion_lv.conditional import Inpainting, sample_conditional
from diffusion_lv.eval import image_grid
from diffusion_lv.eval import inpaint as inpaint_lib
from diffusion_lv.eval.nll import evaluate_nll, evaluate_nll_bound, finite_or_none
from diffusion_lv.experiment import Experiment
from diffusion_lv.parameterization import Parameterization, bind
from diffusion_lv.training import state as state_lib
from diffusion_lv.training.checkpoint import checkpoint_dir, saved_steps

PERIODIC_SAMPLES = 2048  # samples drawn for the every-K-steps pictures


def restore_checkpoint(experiment: Experiment, workdir: str):
    """The train state of ``eval.checkpoint_step`` (None: the latest); a clear error naming the
    saved steps if the workdir has no such checkpoint (checked before anything compiles)."""
    step = experiment.eval.checkpoint_step
    saved = saved_steps(workdir)
    if not saved:
        raise FileNotFoundError(
            f"no checkpoint in {checkpoint_dir(workdir)}: run --mode=train first"
        )
    if step is not None and step not in saved:
        raise FileNotFoundError(
            f"config.eval.checkpoint_step={step} has no checkpoint in "
            f"{checkpoint_dir(workdir)}; valid choices: {saved}"
        )
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    like = state_lib.create_train_state(
        experiment.network, optimizer, experiment.training.seed, experiment.data_shape,
        len(experiment.training.ema_decays),
    )
    checkpoints = training.Checkpointer(workdir, read_only=True)
    try:
        return checkpoints.restore(like, step)
    finally:
        checkpoints.close()


def params_label(experiment: Experiment) -> str:
    if experiment.eval.params == "raw":
        return "raw"
    decay = experiment.eval.ema_decay or experiment.training.ema_decays[0]
    return f"ema_{decay:g}"


@functools.lru_cache(maxsize=8)
def make_sampler(
    apply_fn: Callable,
    model: Parameterization,
    sampler_config: samplers.SamplerConfig,
    shape: tuple[int, ...],
) -> Callable:
    """``run(params, key) -> (samples, nfe)``: the whole sampler as one compiled program.

    Cached on its (hashable) arguments, so periodic and final sampling share one compilation.
    """

    @jax.jit
    def run(params, key):
        x, info = samplers.sample(model.model_fn(bind(apply_fn, params)), model, key, shape,
                                  sampler_config)
        return x, info["nfe"]

    def sample(params, key):
        x, nfe = run(params, key)
        return x, int(nfe)

    sample.compiled = lambda: run._cache_size() > 0  # noqa: SLF001 - jax's own jit cache
    return sample


def sampler_and_key(experiment: Experiment, num: int):
    """The compiled sampler for ``num`` samples and the evaluation's sampling key."""
    sampler = make_sampler(experiment.network.apply, experiment.parameterization,
                           experiment.sampler, (num, *experiment.data_shape))
    key = jax.random.fold_in(jax.random.PRNGKey(experiment.eval.seed), state_lib.SAMPLE_STREAM)
    return sampler, key


def draw_samples(experiment: Experiment, params, num: int) -> tuple[np.ndarray, int]:
    """``num`` samples in calls of ``eval.sample_batch_size`` (a progress bar over the calls;
    call ``i`` of several uses ``fold_in(key, i)``, one call the key itself), with a line for
    the compilation and one for the sampling."""
    batch = min(experiment.eval.sample_batch_size or num, num)
    calls = -(-num // batch)
    sampler, key = sampler_and_key(experiment, batch)
    keys = [key] if calls == 1 else [jax.random.fold_in(key, i) for i in range(calls)]
    show = distributed.is_main_process()
    what = f"{experiment.sampler.name} at NFE {experiment.sampler.nfe}"
    parts, nfe = [], 0
    if not sampler.compiled():  # the first call compiles: its own line, not the bar's rate
        with progress.phase(f"compiled the sampler ({what}, batch {batch}) and drew "
                            f"{min(batch, num)} samples", enabled=show):
            x, nfe = sampler(params, keys[0])
            parts.append(np.asarray(x))
    if len(parts) < calls:
        rest = num - batch * len(parts)
        label = f"sampled {'the remaining ' if parts else ''}{rest} with {what}"
        with progress.phase(label, enabled=show):
            for k in progress.track(keys[len(parts):], calls - len(parts),
                                    f"sampling ({what})", enabled=show and calls - len(parts) > 1):
                x, nfe = sampler(params, k)
                parts.append(np.asarray(x))
    return np.concatenate(parts)[:num], nfe


def write_samples(experiment: Experiment, state, workdir: str) -> tuple[np.ndarray, int]:
    """``samples.npy`` and the evaluator's pictures of ``eval.num_samples`` samples."""
    params = experiment.eval_params(state)
    samples, nfe = draw_samples(experiment, params, experiment.eval.num_samples)
    if not distributed.is_main_process():  # every process samples the same; one writes
        return samples, nfe
    np.save(os.path.join(workdir, "samples.npy"), samples)
    model = experiment.parameterization
    with progress.phase("wrote the sample pictures"):
        experiment.evaluator.write_samples(
            samples, workdir,
            title=f"{experiment.dataset}: step {int(state.step)}, {experiment.sampler.name} "
            f"{nfe} NFE, {params_label(experiment)} params",
            ve_denoiser=model.ve_denoiser(model.model_fn(bind(experiment.network.apply, params))),
            sigma_range=(model.schedule.sigma_ve_min, model.schedule.sigma_ve_max),
        )
    return samples, nfe


def write_metrics(experiment: Experiment, state, workdir: str, extra: dict | None = None) -> dict:
    """Sample, measure and write ``metrics.json``; returns the metrics."""
    start = time.perf_counter()
    samples, nfe = write_samples(experiment, state, workdir)
    key = jax.random.PRNGKey(experiment.eval.seed + 1)
    result = {
        "step": int(state.step),
        "dataset": experiment.dataset,
        "schedule": experiment.schedule.describe(),
        "prediction": experiment.parameterization.prediction,
        "params": params_label(experiment),
        "sampler": experiment.sampler.name,
        "nfe": nfe,
    }
    with progress.phase("measured the samples", enabled=distributed.is_main_process()):
        result.update(experiment.evaluator.quality(samples, key, workdir))
    if experiment.eval.nll_examples > 0:
        with progress.phase(f"NLL (and its bound) of {experiment.eval.nll_examples} held-out "
                            "examples",
                            enabled=distributed.is_main_process()):
            result.update(held_out_nll(experiment, state))
    excess = objective_excess(experiment)
    if excess is not None:
        with progress.phase("measured J - J*", enabled=distributed.is_main_process()):
            result.update(excess(experiment.eval_params(state)))
    result["eval_seconds"] = round(time.perf_counter() - start, 2)
    result.update(extra or {})
    if distributed.is_main_process():
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def held_out_nll(experiment: Experiment, state) -> dict:
    """NLL (bits/dim, with its standard error) of the evaluator's held-out data, with the true
    density's figure for the same points where it is known."""
    data, source = experiment.evaluator.held_out(
        experiment.eval.nll_examples, jax.random.PRNGKey(experiment.eval.seed + 2)
    )
    config = experiment.eval.likelihood
    figures = evaluate_nll(
        experiment.network.apply, experiment.eval_params(state), experiment.parameterization,
        data, config, experiment.eval.nll_batch_size, jax.random.PRNGKey(experiment.eval.seed + 3),
        show_progress=distributed.is_main_process(),
    )
    result = {
        "nll_bpd": finite_or_none(figures["bits_per_dim"]),
        "nll_bpd_standard_error": finite_or_none(figures["bits_per_dim_standard_error"]),
        "nll_nats": finite_or_none(figures["nll"]),
        "nll_nats_standard_error": finite_or_none(figures["nll_standard_error"]),
        "nll_examples": int(figures["num_examples"]),
        "nll_data": source,
        "nll_dequantized_levels": config.num_levels,
        "nll_divergence": config.divergence
        + (f" ({config.num_probes} probe{'s' * (config.num_probes > 1)})"
           if config.divergence == "hutchinson" else ""),
        "nll_nfe_per_solve": finite_or_none(figures["nfe"]),
        "nll_unsolved_batches": int(figures["unsolved_batches"]),
    }
    if experiment.eval.nll_bound_times:
        bound = evaluate_nll_bound(
            experiment.network.apply, experiment.eval_params(state), experiment.parameterization,
            data,
            likelihood_bound.BoundConfig.like(config, num_times=experiment.eval.nll_bound_times),
            experiment.eval.nll_batch_size, jax.random.PRNGKey(experiment.eval.seed + 4),
        )
        result.update({
            "nll_bound_bpd": finite_or_none(bound["bits_per_dim"]),
            "nll_bound_bpd_standard_error": finite_or_none(bound["bits_per_dim_standard_error"]),
            "nll_bound_nats": finite_or_none(bound["nll"]),
            "nll_bound_nats_standard_error": finite_or_none(bound["nll_standard_error"]),
            "nll_bound_time_draws": experiment.eval.nll_bound_times,
        })
    exact = experiment.evaluator.true_nll(data, experiment.schedule)
    if exact is not None:
        result["nll_bpd_true_density"] = exact
    return result


def objective_excess(experiment: Experiment) -> Callable[[object], dict] | None:
    """``measure(params) -> {"objective_excess_bpd": ..., its standard error, one
    "objective_excess_bpd_sigma_<band>" per sigma_ve band}``: ``J(theta) - J*`` in bits/dim
    on ``eval.excess_examples`` fresh draws of the data's exact mixture, always the same draws
    and times (a curve over training compares like with like). None where the data have no
    exact denoiser or the metric is off."""
    mixture = experiment.evaluator.mixture
    if mixture is None or not experiment.eval.excess_examples:
        return None
    model = experiment.parameterization
    config = likelihood_bound.BoundConfig(num_times=experiment.eval.nll_bound_times or 64)
    fn = likelihood_bound.make_excess_fn(model.model_apply(experiment.network.apply), model,
                                         config)
    key = jax.random.PRNGKey(experiment.eval.seed + 5)
    x0 = mixture.sample(jax.random.fold_in(key, 0), experiment.eval.excess_examples)
    x0 = x0.astype(np.float32)

    def measure(params) -> dict:
        result = fn(params, x0, jax.random.fold_in(key, 1), mixture)
        figures = likelihood_bound.excess_bits_per_dim(result, int(np.prod(x0.shape[1:])))
        out = {"objective_excess_bpd": figures.pop("excess"),
               "objective_excess_bpd_standard_error": figures.pop("excess_standard_error")}
        # the rest are the bands, "excess_below_0.1" ... "excess_above_10"
        out.update({f"objective_excess_bpd_sigma_{name.removeprefix('excess_')}": value
                    for name, value in figures.items()})
        return out

    return measure


def inpaint_folder(experiment: Experiment, workdir: str, step: int) -> str:
    """``<workdir>/inpaint/step_<step>-<mask>-<method>-nfe<nfe>-<params>``."""
    return os.path.join(workdir, "inpaint", f"step_{step:07d}-{experiment.inpaint.tag}-"
                        f"{params_label(experiment)}")


def _inpaint_examples(experiment: Experiment, num: int):
    """Held-out examples to complete and, for digits, their labels."""
    if experiment.dataset == "digits":
        from diffusion_lv.eval import digits_features

        images, labels = digits_features.scaled_split(experiment.image_data.eval_split)
        split = experiment.image_data.eval_split
        return images[:num].astype(np.float32), labels[:num], f"digits/{split}"
    data, source = experiment.evaluator.held_out(num,
                                                 jax.random.PRNGKey(experiment.eval.seed + 5))
    return np.asarray(data, np.float32), None, source


def write_inpainting(experiment: Experiment, state, workdir: str) -> tuple[dict, str]:
    """Complete ``inpaint.num_examples`` held-out examples whose ``inpaint.mask`` part is
    unknown; write ``completions.npy``, ``inpainting.png`` (rows of masked inputs, completions
    and originals for images; the completed points for 2-D data) and ``metrics.json`` into
    ``inpaint_folder``. Returns the metrics and the folder."""
    spec, model = experiment.inpaint, experiment.parameterization
    params = experiment.eval_params(state)
    folder = inpaint_folder(experiment, workdir, int(state.step))
    examples, labels, source = _inpaint_examples(experiment, spec.num_examples)
    num, copies = len(examples), spec.copies
    unknown = inpaint_lib.unknown_mask(spec.mask, examples.shape[1:], num, experiment.eval.seed)
    # The particle filter completes each example with its own group of `copies` rows.
    originals, unknown = np.repeat(examples, copies, 0), np.repeat(unknown, copies, 0)
    labels = None if labels is None else np.repeat(labels, copies, 0)
    condition = Inpainting(mask=np.logical_not(unknown), values=originals)
    model_fn = model.model_fn(bind(experiment.network.apply, params))
    draw = jax.jit(lambda key, known: sample_conditional(model_fn, model, key, known,
                                                         spec.conditional))
    show = distributed.is_main_process()
    what = f"{spec.conditional.method} at NFE {spec.conditional.nfe}"
    with progress.phase(f"inpainted {num} examples ({spec.mask} unknown) with {what}",
                        enabled=show):
        completions, info = draw(jax.random.PRNGKey(experiment.eval.seed + 6), condition)
        completions = np.asarray(completions)
    result = {
        "step": int(state.step), "dataset": experiment.dataset, "data": source,
        "schedule": experiment.schedule.describe(),
        "prediction": model.prediction, "params": params_label(experiment),
        "sampler": f"inpaint_{spec.mask}_{spec.conditional.method}", "nfe": int(info["nfe"]),
        "mask": spec.mask, "method": spec.conditional.method,
        "options": spec.conditional.resolved_options, "examples": num,
        "completions_per_example": copies,
        "unknown_fraction": float(unknown.mean()),
        "unknown_rmse": inpaint_lib.unknown_rmse(completions, originals, unknown),
    }
    with progress.phase("measured the completions", enabled=show):
        if labels is not None:
            masked = np.where(unknown, 0.0, originals)  # unknown pixels grey
            for name, images in (("", completions), ("masked_input_", masked),
                                 ("originals_", originals)):
                result.update({f"{name}{k}": v
                               for k, v in inpaint_lib.digits_scores(images, labels).items()})
        elif experiment.image_data is None:  # the joint of known and completed: the data's law
            result.update(experiment.evaluator.quality(
                completions, jax.random.PRNGKey(experiment.eval.seed + 1)))
    if not show:
        return result, folder
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "completions.npy"), completions)
    title = (f"{experiment.dataset}: step {int(state.step)}, {spec.mask} unknown, "
             f"{spec.conditional.method} {result['nfe']} NFE, {params_label(experiment)} params")
    with progress.phase("wrote the inpainting picture", enabled=show):
        if experiment.image_data is None:
            experiment.evaluator.write_samples(completions, folder, title=title)
        else:
            shown = min(num, 8)
            first = slice(0, shown * copies, copies)  # one completion per example
            rows = [np.where(unknown, 0.0, originals)[first],
                    np.clip(completions, -1.0, 1.0)[first], originals[first]]
            image_grid.save_image_grid(
                np.concatenate(rows), os.path.join(folder, "inpainting.png"), num_cols=shown,
                title=f"{title} (rows: masked input, completion, original)")
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result, folder


def inpaint_summary(metrics: dict) -> str:
    """The console line of ``--mode=inpaint``."""
    copies = metrics.get("completions_per_example", 1)
    each = f", {copies} completions each (scored together)," if copies > 1 else ""
    line = (f"inpainted {metrics['examples']} examples of {metrics['dataset']}{each} "
            f"({metrics['mask']} unknown, {100 * metrics['unknown_fraction']:.0f}% of the values) "
            f"with {metrics['method']} at NFE {metrics['nfe']}: RMS error on the unknown part "
            f"{metrics['unknown_rmse']:.4f}")
    if "accuracy" in metrics:
        line += (f"; digits classifier accuracy {metrics['accuracy']:.3f} (masked input "
                 f"{metrics['masked_input_accuracy']:.3f}, originals "
                 f"{metrics['originals_accuracy']:.3f}), Frechet distance "
                 f"{metrics['frechet_distance']:.2f} (originals "
                 f"{metrics['originals_frechet_distance']:.2f})")
    if "swd" in metrics:
        line += (f"; sliced Wasserstein of the completed points to the data "
                 f"{metrics['swd']:.4f} vs floor {metrics['swd_floor']:.4f} (ratio "
                 f"{metrics['swd_ratio']:.2f})")
    return line


def output_folder(experiment: Experiment, workdir: str, step: int) -> str:
    """``<workdir>/eval/step_<step>-<sampler>-nfe<nfe>-<params>``: one folder per evaluated
    setting, so eval and sample never overwrite training's outputs or another setting's."""
    tag = (f"step_{step:07d}-{experiment.sampler.name}-nfe{experiment.sampler.nfe}-"
           f"{params_label(experiment)}")
    return os.path.join(workdir, "eval", tag)


def record_eval(workdir: str, folder: str, settings: dict, metrics: dict | None) -> None:
    """``<folder>/eval_config.json`` (the eval-time settings used) and one line of
    ``<workdir>/metrics_history.jsonl`` per evaluation (training's final one included)."""
    if not distributed.is_main_process():
        return
    if folder != workdir:
        with open(os.path.join(folder, "eval_config.json"), "w") as f:
            json.dump(settings, f, indent=2)
    if metrics is not None:
        line = {"folder": os.path.relpath(folder, workdir), "time": time.time(), **metrics}
        with open(os.path.join(workdir, "metrics_history.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        tensorboard = progress.TensorBoard(workdir)
        tensorboard.scalars(metrics["step"], eval_scalars(metrics))
        tensorboard.close()


def eval_scalars(metrics: dict) -> dict[str, float]:
    """The numeric metrics as TensorBoard scalars ``eval/<sampler>-nfe<K>-<params>/<name>``:
    one curve per evaluated setting, plotted against the checkpoint's step."""
    setting = f"eval/{metrics['sampler']}-nfe{metrics['nfe']}-{metrics['params']}"
    return {
        f"{setting}/{name}": float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
        and name not in ("step", "nfe") and math.isfinite(value)
    }


def nll_summary(metrics: dict) -> str:
    line = (
        f"NLL {metrics['nll_bpd']:.4f} +- {metrics['nll_bpd_standard_error']:.4f} bits/dim "
        f"(standard error) on {metrics['nll_examples']} held-out examples of "
        f"{metrics['nll_data']}"
    )
    if metrics.get("nll_bound_bpd") is not None:
        line += (f"; the reverse-SDE model's bound: {metrics['nll_bound_bpd']:.4f} +- "
                 f"{metrics['nll_bound_bpd_standard_error']:.4f}")
    if "nll_bpd_true_density" in metrics:
        line += f"; the true density: {metrics['nll_bpd_true_density']:.4f}"
    if metrics.get("objective_excess_bpd") is not None:
        line += (f"\nJ - J* (the ML objective's excess over its minimum) "
                 f"{metrics['objective_excess_bpd']:.4f} +- "
                 f"{metrics['objective_excess_bpd_standard_error']:.4f} bits/dim")
    return line


def periodic_sampler(experiment: Experiment, workdir: str):
    """``on_sample(state, tensorboard)``: pictures of EMA samples every ``sample_every`` steps."""
    folder = os.path.join(workdir, "samples")
    sampler, key = sampler_and_key(experiment, min(PERIODIC_SAMPLES, experiment.eval.num_samples))
    excess = objective_excess(experiment)

    def on_sample(state, tensorboard):
        if not distributed.is_main_process():
            return
        os.makedirs(folder, exist_ok=True)
        # Host copies: a local program on process 0, not one over the global mesh.
        params = distributed.to_host(experiment.eval_params(state))
        samples, nfe = sampler(params, key)
        if excess is not None:  # the quantity the objective is about, exact here
            tensorboard.scalars(int(state.step), {
                f"objective/{name}": value for name, value in excess(params).items()})
        experiment.evaluator.periodic(
            samples, folder, int(state.step), tensorboard,
            title=f"{experiment.dataset}: step {int(state.step)}, {experiment.sampler.name} "
            f"{nfe} NFE, {params_label(experiment)} params")

    return on_sample
