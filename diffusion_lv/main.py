"""Entry point: ``python -m diffusion_lv.main --workdir=runs/x [--config=...] [--mode=...]``.

Modes:
  train   train (resuming from the workdir's latest checkpoint if any), then sample and evaluate
  eval    metrics.json and samples.png from the latest checkpoint (EMA params by default)
  sample  samples.png and samples.npy from the latest checkpoint

Any config value can be overridden on the command line, e.g.
``--config=configs/toy.py:ring8,vp_sde --config.training.num_steps=2000``. The config is
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

import os
import sys
import time

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from diffusion_lv import config_files, distributed, evaluate, training
from diffusion_lv import experiment as experiment_lib

MODES = ("train", "eval", "sample")

config_files.make_configs_importable()
config_flags.DEFINE_config_file(
    "config", config_files.DEFAULT_CONFIG,
    "Config file (ml_collections); overrides as --config.key=value.",
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
            workdir, experiment.network, experiment.parameterization, experiment.loss,
            experiment.optimizer, experiment.training, experiment.dataset_fn,
            experiment.data_shape,
            on_sample=evaluate.periodic_sampler(experiment, workdir)
            if experiment.training.sample_every else None,
            make_batches=experiment.make_batches,
        )
        if result.stopped_by is not None:
            return None
        train_seconds = round(time.perf_counter() - start, 2)
        # Every process evaluates the same host copy locally (no collective); process 0 writes.
        state = distributed.to_host(result.state)
        return evaluate.write_metrics(experiment, state, workdir,
                                      {"train_seconds": train_seconds})
    state = evaluate.restore_checkpoint(experiment, workdir)
    if mode == "sample":
        evaluate.write_samples(experiment, state, workdir)
        return None
    return evaluate.write_metrics(experiment, state, workdir)


def summary(config, metrics: dict, workdir: str, seconds: float) -> str:
    """The console lines after a run: the evaluator's verdict, then the NLL if computed."""
    evaluator = experiment_lib.parse(config).evaluator
    lines = [f"{evaluator.summary(metrics)}; wrote {os.path.join(workdir, 'metrics.json')} "
             f"[{seconds:.0f} s]"]
    if metrics.get("nll_bpd") is not None:
        lines.append(evaluate.nll_summary(metrics))
    return "\n".join(lines)


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
    if metrics is not None and distributed.is_main_process():
        print(summary(FLAGS.config, metrics, FLAGS.workdir, time.perf_counter() - start))


if __name__ == "__main__":
    app.run(main)
