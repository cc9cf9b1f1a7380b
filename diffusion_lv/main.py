"""Entry point: ``python -m diffusion_lv.main --workdir=runs/x [--config=...] [--mode=...]``.

Modes: ``train`` (resuming from the workdir's latest checkpoint if any, then sample and
evaluate), ``eval`` (samples, metrics and held-out NLL of a checkpoint, EMA params by default),
``sample``, and ``inpaint`` (held-out examples completed by a conditional sampler, set by
``inpaint.*``). Any config value can be overridden, e.g.
``--config=configs/toy.py:ring8,vp_sde --config.training.num_steps=2000``; without ``--config``
the quick-start ``configs/default.py`` runs. Everything is checked before anything compiles.

The workdir is the run's record (layout in the README): ``config.json`` and ``run.json`` are
written once when training starts from scratch; ``eval``/``sample``/``inpaint`` evaluate the
recorded model (without ``--config`` they read its config; ``sampler.*``, ``eval.*`` and
``inpaint.*`` may be overridden) into ``eval/<step>-<sampler>-<nfe>-<params>/`` (``inpaint/...``
for inpainting); a config that changes the model is refused for them and for resuming, naming
the keys. One training run holds a workdir at a time (``run.lock``).

Exit statuses: 0 finished; 2 usage or config error (one line on stderr, no traceback unless
``--verbosity`` is given, the workdir unchanged); 3 stopped by SIGTERM/SIGINT after saving;
4 stopped on a non-finite loss or gradient; 5 no checkpoint passed verification.

Multi-process runs (docs/scale.md): ``--distributed=auto`` (TPU pod slice / SLURM) or
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``. Every process trains and
joins every checkpoint save; only process 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from diffusion_lv import (
    command_line,
    config_files,
    console,
    distributed,
    evaluate,
    run_dir,
    training,
)
from diffusion_lv import experiment as experiment_lib

MODES = ("train", "eval", "sample", "inpaint")
EXIT_PREEMPTED, EXIT_NONFINITE, EXIT_NO_CHECKPOINT = 3, 4, 5  # usage errors: 2

config_files.make_configs_importable()
if __name__ == "__main__":
    # ml_collections reads the config file and its overrides while --config is defined below
    # (with long tracebacks for a bad file or key): check them first.
    command_line.precheck(sys.argv)
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
    """Run one mode; returns the metrics (eval, or train that finished), else None.

    Every check (config, resume compatibility, the checkpoint to evaluate) comes before the run
    touches the workdir; from then on its console is appended to ``<workdir>/log.txt``."""
    start = time.perf_counter()
    experiment = experiment_lib.parse(config)  # every check before anything compiles
    settings = {"sampler": config.sampler.to_dict(), "eval": config.eval.to_dict(),
                "inpaint": config.inpaint.to_dict() if "inpaint" in config else None,
                "command": sys.argv}
    main_process = jax.process_index() == 0
    if mode == "train":
        run_dir.check_resume(workdir, config)  # before the lock and any restore
    else:
        state = evaluate.restore_checkpoint(experiment, workdir)
    command = " ".join(["python -m diffusion_lv.main", *sys.argv[1:]])
    log = console.kept_in(run_dir.log_file(workdir), command, enabled=main_process)
    with log:
        if mode == "train":
            metrics = _train(experiment, config, workdir, settings)
        else:
            metrics = _evaluate(experiment, state, workdir, mode, settings)
        if metrics is not None and main_process:
            print(summary(experiment, metrics, workdir, mode, time.perf_counter() - start))
    return metrics


def _evaluate(experiment, state, workdir: str, mode: str, settings: dict) -> dict | None:
    """Eval/sample/inpaint into a folder of its own: training's record is never overwritten."""
    if mode == "inpaint":
        metrics, folder = evaluate.write_inpainting(experiment, state, workdir)
        evaluate.record_eval(workdir, folder, settings, metrics)
        return metrics
    folder = evaluate.output_folder(experiment, workdir, int(state.step))
    os.makedirs(folder, exist_ok=True)
    if mode == "sample":
        evaluate.write_samples(experiment, state, folder)
        evaluate.record_eval(workdir, folder, settings, None)
        return None
    metrics = evaluate.write_metrics(experiment, state, folder)
    evaluate.record_eval(workdir, folder, settings, metrics)
    return metrics


def _train(experiment, config, workdir: str, settings: dict) -> dict | None:
    main_process = jax.process_index() == 0
    with run_dir.WorkdirLock(workdir) if main_process else contextlib.nullcontext() as lock:
        if lock is not None and lock.stale is not None:
            print(f"removed the stale lock of pid {lock.stale.get('pid')} (no such process)")
        if main_process and not run_dir.started(workdir):
            run_dir.write_record(workdir, config, sys.argv, [str(d) for d in jax.devices()])
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
        metrics = evaluate.write_metrics(experiment, state, workdir,
                                         {"train_seconds": train_seconds})
        evaluate.record_eval(workdir, workdir, settings, metrics)
        return metrics


def summary(experiment, metrics: dict, workdir: str, mode: str, seconds: float) -> str:
    """The console lines after a run: the evaluator's verdict, then the NLL if computed."""
    if mode == "inpaint":
        folder = evaluate.inpaint_folder(experiment, workdir, metrics["step"])
        return (f"{evaluate.inpaint_summary(metrics)}; wrote "
                f"{os.path.join(folder, 'metrics.json')} [{seconds:.0f} s]")
    folder = workdir if mode == "train" else evaluate.output_folder(experiment, workdir,
                                                                     metrics["step"])
    lines = [f"{experiment.evaluator.summary(metrics)}; wrote "
             f"{os.path.join(folder, 'metrics.json')} [{seconds:.0f} s]"]
    if metrics.get("nll_bpd") is not None:
        lines.append(evaluate.nll_summary(metrics))
    return "\n".join(lines)


def _config_given(argv) -> bool:
    return any(a == "--config" or a.startswith("--config=") for a in argv)


def resolve_config(mode: str, workdir: str, argv):
    """The config a mode runs with: the command line's for training; for eval/sample the run's
    record with the eval-time sections from the command line (run_dir.eval_config)."""
    if mode == "train":
        return FLAGS.config
    return run_dir.eval_config(workdir, FLAGS.config, _config_given(argv),
                               config_flags.get_override_values(FLAGS["config"]))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    verbose = FLAGS["verbosity"].present
    console.quiet(verbose)  # before anything starts a backend or compiles
    mode = FLAGS.distributed
    if mode == "off" and FLAGS.coordinator_address is not None:
        mode = "explicit"
    try:
        distributed.initialize(
            mode, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    try:
        run_dir.check_workdir(FLAGS.workdir, FLAGS.mode)
        config = resolve_config(FLAGS.mode, FLAGS.workdir, sys.argv)
        metrics = run(config, FLAGS.workdir, FLAGS.mode)
    except (experiment_lib.ConfigError, run_dir.RunDirError, FileNotFoundError) as err:
        if verbose:
            raise
        command_line.fail(str(err))
    except training.NonFiniteError as err:
        command_line.fail(str(err), EXIT_NONFINITE)
    except training.CheckpointError as err:
        command_line.fail(str(err), EXIT_NO_CHECKPOINT)
    if FLAGS.mode == "train" and metrics is None:
        sys.exit(EXIT_PREEMPTED)  # the loop said where it stopped and that it saved


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except Exception as err:  # noqa: BLE001 - a flag error in one line, not a traceback
        command_line.fail(command_line.first_line(err))


def cli(argv=None):
    """``python -m diffusion_lv.main``: command-line errors in one line with status 2."""
    argv = sys.argv if argv is None else argv
    command_line.precheck(argv)
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
