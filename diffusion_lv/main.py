"""Entry point: ``python -m diffusion_lv.main --workdir=runs/x [--config=...] [--mode=...]``.

Modes:
  train   train (resuming from the workdir's latest checkpoint if any), then sample and evaluate
  eval    metrics.json and samples.png from the latest checkpoint (EMA params by default)
  sample  samples.png and samples.npy from the latest checkpoint

Any config value can be overridden on the command line, e.g.
``--config=configs/toy/ring8_vp_sde.py --config.training.num_steps=2000``. The config is
validated before anything compiles. Without ``--config`` the quick-start config
``configs/default.py`` runs.

The workdir holds ``config.json``, ``checkpoints/`` (orbax), ``tensorboard/`` (event files),
``samples/step_*.png`` (during training), ``samples.png``, ``samples.npy`` and ``metrics.json``.

Multi-process runs (one process per host or per GPU; see docs/scale.md): ``--distributed=auto``
detects a cloud TPU pod slice / SLURM; ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` starts one of N processes explicitly. Every process trains (the mesh spans all
global devices) and joins every checkpoint save; only process 0 logs and writes files. ``eval``
and ``sample`` read the latest checkpoint and need only one process.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from diffusion_lv import distributed, evaluate, training
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.eval import images as image_eval
from diffusion_lv.training import state as state_lib

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "default.py")
MODES = ("train", "eval", "sample")

config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Config file (ml_collections); overrides as --config.key=value."
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and metrics.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_enum(
    "distributed", "off", distributed.MODES,
    "Multi-process runtime: off (one process), auto (jax.distributed.initialize() detects a TPU "
    "pod slice / SLURM), explicit (implied by --coordinator_address).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit mode).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit mode).")
flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
FLAGS = flags.FLAGS

PERIODIC_SAMPLES = 2048  # samples drawn for the every-K-steps plots


def restore_checkpoint(experiment: experiment_lib.Experiment, workdir: str):
    """The train state of ``eval.checkpoint_step`` (None: the latest); a clear error naming the
    saved steps if the workdir has no such checkpoint."""
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    like = state_lib.create_train_state(
        experiment.network, optimizer, experiment.training.seed, experiment.data_shape,
        len(experiment.training.ema_decays),
    )
    step = experiment.eval.checkpoint_step
    checkpoints = training.Checkpointer(workdir, read_only=True)
    try:
        saved = checkpoints.all_steps()
        if not saved:
            raise FileNotFoundError(
                f"no checkpoint in {checkpoints.directory}: run --mode=train first"
            )
        if step is not None and step not in saved:
            raise FileNotFoundError(
                f"config.eval.checkpoint_step={step} has no checkpoint in "
                f"{checkpoints.directory}; valid choices: {sorted(saved)}"
            )
        return checkpoints.restore(like, step)
    finally:
        checkpoints.close()


def params_label(experiment: experiment_lib.Experiment) -> str:
    if experiment.eval.params == "raw":
        return "raw"
    decay = experiment.eval.ema_decay or experiment.training.ema_decays[0]
    return f"ema_{decay:g}"


def sampler_and_key(experiment, num: int):
    """The compiled sampler for ``num`` samples (cached: shared by periodic and final sampling)
    and the evaluation's sampling key."""
    sampler = evaluate.make_sampler(
        experiment.network.apply, experiment.parameterization, experiment.sampler,
        (num, *experiment.data_shape),
    )
    key = jax.random.fold_in(jax.random.PRNGKey(experiment.eval.seed), state_lib.SAMPLE_STREAM)
    return sampler, key


def draw_samples(experiment, state, num: int):
    sampler, key = sampler_and_key(experiment, num)
    return sampler(experiment.eval_params(state), key)


def write_samples(experiment, state, workdir: str) -> tuple[np.ndarray, int]:
    samples, nfe = draw_samples(experiment, state, experiment.eval.num_samples)
    samples = np.asarray(samples)
    if not distributed.is_main_process():  # every process samples the same; one writes
        return samples, nfe
    np.save(os.path.join(workdir, "samples.npy"), samples)
    if experiment.image_data is not None:  # a grid of images, and the denoising strip
        image_eval.write_grid(samples, os.path.join(workdir, "samples.png"))
        image_eval.write_denoising_strip(
            experiment, experiment.eval_params(state), os.path.join(workdir, "denoising.png")
        )
        return samples, nfe
    evaluate.plot_samples(
        samples, experiment.dataset, os.path.join(workdir, "samples.png"),
        title=f"{experiment.dataset}: step {int(state.step)}, {experiment.sampler.name} "
        f"{nfe} NFE, {params_label(experiment)} params",
    )
    return samples, nfe


def write_metrics(experiment, state, workdir: str, extra: dict | None = None) -> dict:
    start = time.perf_counter()
    samples, nfe = write_samples(experiment, state, workdir)
    key = jax.random.PRNGKey(experiment.eval.seed + 1)
    if experiment.image_data is not None:
        quality = image_eval.sample_quality(samples, experiment, workdir)
    else:
        quality = evaluate.sample_quality(
            samples, evaluate.reference_sampler(experiment.dataset), key,
            experiment.eval.num_projections, experiment.eval.repeats,
        )
    result = {
        "step": int(state.step),
        "dataset": experiment.dataset,
        "schedule": experiment.schedule.describe(),
        "prediction": experiment.parameterization.prediction,
        "params": params_label(experiment),
        "sampler": experiment.sampler.name,
        "nfe": nfe,
        **quality,
    }
    if experiment.eval.nll_examples > 0:
        result.update(held_out_nll(experiment, state))
    result["eval_seconds"] = round(time.perf_counter() - start, 2)
    result.update(extra or {})
    if distributed.is_main_process():
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def held_out_nll(experiment, state) -> dict:
    """NLL (bits/dim, with its standard error) of held-out data: the image set's eval split
    (all of it if smaller than ``eval.nll_examples``), or fresh draws of a 2-D set from their
    own stream, with the true density's figure for the same points where it is known."""
    if experiment.image_data is not None:
        available = experiment.image_data.num_examples(experiment.image_data.eval_split)
        data = experiment.image_data.examples(min(experiment.eval.nll_examples, available))
        source = f"{experiment.dataset}/{experiment.image_data.eval_split}"
    else:
        data = experiment.dataset_fn(jax.random.PRNGKey(experiment.eval.seed + 2),
                                     experiment.eval.nll_examples)
        source = f"{experiment.dataset} (fresh draws)"
    config = experiment.eval.likelihood
    figures = evaluate.evaluate_nll(
        experiment.network.apply, experiment.eval_params(state), experiment.parameterization,
        data, config, experiment.eval.nll_batch_size, jax.random.PRNGKey(experiment.eval.seed + 3),
        show_progress=distributed.is_main_process(),
    )
    result = {
        "nll_bpd": evaluate.finite_or_none(figures["bits_per_dim"]),
        "nll_bpd_standard_error": evaluate.finite_or_none(figures["bits_per_dim_standard_error"]),
        "nll_nats": evaluate.finite_or_none(figures["nll"]),
        "nll_nats_standard_error": evaluate.finite_or_none(figures["nll_standard_error"]),
        "nll_examples": int(figures["num_examples"]),
        "nll_data": source,
        "nll_dequantized_levels": config.num_levels,
        "nll_divergence": config.divergence
        + (f" ({config.num_probes} probe{'s' * (config.num_probes > 1)})"
           if config.divergence == "hutchinson" else ""),
        "nll_nfe_per_solve": evaluate.finite_or_none(figures["nfe"]),
        "nll_unsolved_batches": int(figures["unsolved_batches"]),
    }
    exact = evaluate.exact_nll_bits_per_dim(experiment.dataset, data, experiment.schedule)
    if exact is not None:
        result["nll_bpd_true_density"] = exact
    return result


def nll_summary(metrics: dict) -> str:
    line = (
        f"NLL {metrics['nll_bpd']:.4f} +- {metrics['nll_bpd_standard_error']:.4f} bits/dim "
        f"(standard error) on {metrics['nll_examples']} held-out examples of "
        f"{metrics['nll_data']}"
    )
    if "nll_bpd_true_density" in metrics:
        line += f"; the true density: {metrics['nll_bpd_true_density']:.4f}"
    return line


def periodic_sampler(experiment, workdir: str):
    """``on_sample(state, tensorboard)``: a plot of EMA samples every ``sample_every`` steps."""
    folder = os.path.join(workdir, "samples")
    sampler, key = sampler_and_key(experiment, min(PERIODIC_SAMPLES, experiment.eval.num_samples))

    def on_sample(state, tensorboard):
        if not distributed.is_main_process():
            return
        os.makedirs(folder, exist_ok=True)
        step = int(state.step)
        # Host copies: a local program on process 0, not one over the global mesh.
        samples, _ = sampler(distributed.to_host(experiment.eval_params(state)), key)
        if experiment.image_data is not None:
            image_eval.periodic_grid(samples, folder, step, tensorboard)
            return
        figure = evaluate.plot_samples(samples, experiment.dataset, title=f"step {step}")
        figure.savefig(os.path.join(folder, f"step_{step:07d}.png"))
        tensorboard.figure(step, "samples", figure)
        import matplotlib.pyplot as plt

        plt.close(figure)

    return on_sample


def run(config, workdir: str, mode: str) -> dict | None:
    """Run one mode; returns the metrics (eval, or train that finished), else None."""
    experiment = experiment_lib.parse(config)  # every check before anything compiles
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    if mode == "train":
        start = time.perf_counter()
        result = training.train(
            workdir,
            experiment.network,
            experiment.parameterization,
            experiment.loss,
            experiment.optimizer,
            experiment.training,
            experiment.dataset_fn,
            experiment.data_shape,
            on_sample=periodic_sampler(experiment, workdir)
            if experiment.training.sample_every
            else None,
            make_batches=experiment.image_data and experiment.image_data.step_batches,
        )
        if result.stopped_by is not None:
            return None
        train_seconds = round(time.perf_counter() - start, 2)
        # Every process evaluates the same host copy locally (no collective); process 0 writes.
        state = distributed.to_host(result.state)
        return write_metrics(experiment, state, workdir, {"train_seconds": train_seconds})
    state = restore_checkpoint(experiment, workdir)
    if mode == "sample":
        write_samples(experiment, state, workdir)
        return None
    return write_metrics(experiment, state, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    mode = FLAGS.distributed
    if mode == "off" and FLAGS.coordinator_address is not None:
        mode = "explicit"
    try:
        distributed.initialize(
            mode, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    if not FLAGS["verbosity"].present:
        # orbax logs every save step at INFO; keep the console to the progress line.
        absl_logging.set_verbosity(absl_logging.WARNING)
    start = time.perf_counter()
    try:
        metrics = run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    except (experiment_lib.ConfigError, training.NonFiniteError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if not distributed.is_main_process():
        return
    if metrics is not None and "swd" not in metrics:  # image data
        print(
            f"{image_eval.summary_line(metrics)}; wrote "
            f"{os.path.join(FLAGS.workdir, 'metrics.json')} [{time.perf_counter() - start:.0f} s]"
        )
    elif metrics is not None:
        verdict = "within" if metrics["within_2x_floor"] else "NOT within"
        print(
            f"sliced Wasserstein {metrics['swd']:.4f} vs floor {metrics['swd_floor']:.4f} "
            f"(ratio {metrics['swd_ratio']:.2f}, {verdict} 2x); "
            f"wrote {os.path.join(FLAGS.workdir, 'metrics.json')} "
            f"[{time.perf_counter() - start:.0f} s]"
        )
    if metrics is not None and metrics.get("nll_bpd") is not None:
        print(nll_summary(metrics))


if __name__ == "__main__":
    app.run(main)
