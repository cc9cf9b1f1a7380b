"""A run directory is a record: bad input is refused in one line before anything runs, with exit
status 2, leaving the workdir byte-identical; eval/sample read the run's config; resuming or
evaluating with another model is refused naming the keys; one training run holds a workdir.

The command-line cases run ``python -m diffusion_lv.main`` as a user does (about 3 s each, most
of it importing JAX); each asserts the exit status, that stderr is one line naming the problem,
and that the workdir's files and bytes did not change.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from diffusion_lv import main as main_lib
from diffusion_lv import run_dir
from diffusion_lv.config_files import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "model.width": 16, "model.num_blocks": 1, "model.embedding_features": 8,
    "training.batch_size": 32, "training.num_steps": 4, "training.steps_per_call": 2,
    "training.log_every": 2, "training.checkpoint_every": 2, "training.sample_every": 4,
    "sampler.nfe": 8, "eval.num_samples": 256, "eval.num_projections": 16, "eval.repeats": 1,
    "eval.nll_examples": 16, "eval.nll_bound_times": 8, "eval.excess_examples": 64,
}
TINY_FLAGS = [f"--config.{k}={v}" for k, v in TINY.items()]


def tiny_config(**changes):
    config = load_config(os.path.join(ROOT, "configs", "default.py"))
    for dotted, value in {**TINY, **changes}.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def snapshot(folder) -> dict:
    """Every file under ``folder`` with the SHA-256 of its bytes (missing folder: None)."""
    if not os.path.exists(folder):
        return None
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    main_lib.run(tiny_config(), workdir, "train")
    return workdir


def cli(*args, timeout=120):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffusion_lv.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def bad_inputs(tmp, workdir):
    """(arguments, fragments of the one-line message) of the bad inputs a user hits."""
    typo = write(tmp / "typo.py", "from configs import default\n\ndef get_config():\n"
                 "    config = default.get_config()\n    config.optimizer.lr = 0.1\n"
                 "    return config\n")
    syntax = write(tmp / "syntax.py", "def get_config(:\n    pass\n")
    no_get = write(tmp / "no_get.py", "x = 1\n")
    a_file = write(tmp / "a_file", "")
    return [
        ([f"--workdir={workdir}", "--config.training.num_stepz=3"],
         ["config.training.num_stepz is not a key", "did you mean config.training.num_steps"]),
        ([f"--workdir={workdir}", "--config.trainng.x=1"],
         ["config.trainng is not a section", "did you mean config.training"]),
        ([f"--workdir={workdir}", f"--config={typo}"],
         ["config.optimizer.lr is not a key", "config.optimizer.learning_rate"]),
        ([f"--workdir={workdir}", f"--config={tmp / 'missing.py'}"], ["does not exist"]),
        ([f"--workdir={workdir}", f"--config={syntax}"], ["syntax.py line 1", "invalid syntax"]),
        ([f"--workdir={workdir}", f"--config={no_get}"], ["has no get_config()"]),
        ([f"--workdir={workdir}", "--config.training.num_steps=abc"],
         ["--config.training.num_steps=abc"]),
        ([f"--workdir={workdir}", "--config.training.ema_decays=(0.9,)", *TINY_FLAGS],
         ["another model", "config.training.ema_decays"]),
        ([f"--workdir={workdir}", "--config.seed=1", *TINY_FLAGS],
         ["another model", "config.seed (run: 0, given: 1)"]),
        ([f"--workdir={workdir}", "--mode=eval", "--config.model.width=32"],
         ["eval and sample may change only", "config.model.width (run: 16, given: 32)"]),
        ([f"--workdir={workdir}", "--mode=eval", "--config=configs/toy.py:two_moons,rf"],
         ["trained with another model", "config.data.name"]),
        ([f"--workdir={workdir}", "--mode=sample", "--config.eval.checkpoint_step=3"],
         ["checkpoint_step=3 has no checkpoint", "valid choices: [2, 4]"]),
        ([f"--workdir={a_file}"], ["is a file"]),
        ([f"--workdir={tmp / 'nowhere'}", "--mode=eval"], ["holds no checkpoint"]),
    ]


def test_bad_inputs_stop_in_one_line_and_leave_the_run_unchanged(trained, tmp_path):
    before = snapshot(trained)
    assert {"config.json", "run.json"} <= set(before)
    for args, fragments in bad_inputs(tmp_path, trained):
        proc, seconds = cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        for fragment in fragments:
            assert fragment in lines[0], (args, fragment, lines[0])
        assert "step" not in proc.stdout, (args, proc.stdout)  # nothing trained or compiled
        assert snapshot(trained) == before, args
        assert seconds < 60, (args, seconds)
    assert not os.path.exists(tmp_path / "nowhere")  # eval never creates a workdir


def test_eval_reads_the_run_and_records_only_eval_time_changes(trained):
    before = snapshot(trained)
    config = main_lib.run_dir.eval_config(trained, tiny_config(), False, {"sampler.nfe": 12})
    assert config.sampler.nfe == 12 and config.model.width == 16
    # Without --config the default config (width 64) is not what is evaluated: the record is.
    proc, _ = cli(f"--workdir={trained}", "--mode=sample", "--config.sampler.nfe=6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A quiet console: no orbax read-only warnings, no backend or XLA banners, only phase lines.
    for noise in ("WARNING", "read only", "Unable to initialize backend", "slow compile"):
        assert noise not in proc.stderr, proc.stderr
    assert "compiled the sampler (heun at NFE 6" in proc.stderr, proc.stderr
    after = snapshot(trained)
    assert after["config.json"] == before["config.json"] and after["run.json"] == before["run.json"]
    record = json.load(open(os.path.join(trained, "run.json")))
    assert record["version"] and record["devices"] and "--config.training.num_steps=4" not in (
        record["command"])  # written by the training call, not by eval


def test_the_run_keeps_its_console_and_its_eval_scalars(trained):
    """``log.txt`` holds each invocation's console after a header with its command; the final
    evaluation is a TensorBoard scalar per metric, tagged by the evaluated setting."""
    log = open(os.path.join(trained, run_dir.LOG_FILE)).read()
    assert log.startswith("# ") and "python -m diffusion_lv.main" in log.splitlines()[0]
    # (the periodic pictures compiled the sampler: the eval's line says it sampled)
    for line in ("training from scratch", "done: 4 steps", "sampled 256 with heun at NFE 8",
                 "measured the samples", "sliced Wasserstein"):
        assert line in log, (line, log)
    events = [os.path.join(base, name) for base, _, names in os.walk(trained)
              for name in names if name.startswith("events.out.tfevents")]
    content = b"".join(open(path, "rb").read() for path in events)
    assert b"eval/heun-nfe8-ema_0.995/swd_ratio" in content
    assert b"eval/heun-nfe8-ema_0.995/step" not in content  # the step is the x axis
    # The ODE NLL, the reverse-SDE bound and J - J* (ring8 has an exact denoiser), also
    # during training (every sample_every steps).
    for tag in (b"eval/heun-nfe8-ema_0.995/nll_bpd", b"eval/heun-nfe8-ema_0.995/nll_bound_bpd",
                b"eval/heun-nfe8-ema_0.995/objective_excess_bpd",
                b"objective/objective_excess_bpd_sigma_below_0.1"):
        assert tag in content, tag
    metrics = json.load(open(os.path.join(trained, "metrics.json")))
    bands = [v for k, v in metrics.items() if k.startswith("objective_excess_bpd_sigma")]
    assert len(bands) == 4 and metrics["objective_excess_bpd"] > 0
    assert sum(bands) == pytest.approx(metrics["objective_excess_bpd"], rel=1e-5)
    assert metrics["nll_bound_bpd_standard_error"] > 0 and metrics["nll_bound_time_draws"] == 8
    assert "the reverse-SDE model's bound" in log and "J - J*" in log


def test_load_run_restores_the_evaluated_model_and_its_sampler(trained):
    """``load_run`` gives back exactly what training's final evaluation sampled (same params,
    sampler and key: the same numbers), picks steps and params, and refuses bad choices."""
    import jax
    import numpy as np

    from diffusion_lv import evaluate, load_run

    before = snapshot(trained)
    run = load_run(trained)
    assert run.step == 4 and run.model.prediction == run.config.diffusion.prediction
    _, key = evaluate.sampler_and_key(run.experiment, 256)
    np.testing.assert_array_equal(np.asarray(run.sample(key, 256)),
                                  np.load(os.path.join(trained, "samples.npy")))
    assert run.sampler_config(nfe=12).name == run.experiment.sampler.name
    assert dict(run.sampler_config("euler", 20, c=2.0).options) == {"c": 2.0}
    assert run.sampler_config(nfe=12).nfe == 12
    raw = load_run(trained, step=2, params="raw")
    assert raw.step == 2 and all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(raw.params), jax.tree.leaves(raw.state.params), strict=True))
    with pytest.raises(FileNotFoundError, match=r"checkpoint_step=3 .*valid choices: \[2, 4\]"):
        load_run(trained, step=3)
    with pytest.raises(main_lib.experiment_lib.ConfigError, match="valid choices"):
        load_run(trained, params="best")
    with pytest.raises(ValueError, match="name='nope' is not valid"):
        run.sample(key, 4, sampler="nope")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(os.path.dirname(trained))
    assert snapshot(trained) == before  # loading writes nothing


def test_resume_with_a_changed_model_is_refused_before_any_restore(trained):
    with pytest.raises(run_dir.RunDirError, match=r"config.model.width \(run: 16, given: 32\)"):
        main_lib.run(tiny_config(**{"model.width": 32}), trained, "train")
    # Changing only how long to train is a resume, not another model.
    assert run_dir.differing_model_keys(tiny_config(), tiny_config(**{
        "training.num_steps": 8, "sampler.nfe": 3})) == []
    assert run_dir.differing_model_keys(tiny_config(), tiny_config(**{
        "optimizer.grad_clip": 0.0})) == [
        "config.optimizer.grad_clip > 0 (run: True, given: False)"]


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    workdir = str(tmp_path)
    lock = os.path.join(workdir, run_dir.LOCK_FILE)
    holder = {"host": "other-host", "pid": 4242, "since": "2026-01-01T00:00:00+00:00"}
    write(lock, json.dumps(holder))
    with pytest.raises(run_dir.RunDirError, match="in use by pid 4242 on host other-host"):
        with run_dir.WorkdirLock(workdir):
            pass
    assert json.load(open(lock)) == holder  # the holder's lock is left alone
    # A lock of a process that no longer exists on this host is stale: replaced, and reported.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    write(lock, json.dumps({"host": socket.gethostname(), "pid": int(dead), "since": "x"}))
    with run_dir.WorkdirLock(workdir) as held:
        assert held.stale["pid"] == int(dead)
        assert json.load(open(lock))["pid"] == os.getpid()
    assert not os.path.exists(lock)  # released


def test_read_only_workdir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores permissions
    with pytest.raises(run_dir.RunDirError, match="cannot be written"):
        run_dir.check_workdir(str(tmp_path / "new"), "train")


def test_exit_status_says_how_a_run_ended(tmp_path):
    """SIGTERM: checkpoint saved, status 3 (a scheduler can tell a preempted run); a
    non-finite loss: status 4 and no checkpoint of it."""
    long_run = [f"--config.{k}={v}" for k, v in {**TINY, "training.num_steps": 100000,
                                                   "training.checkpoint_every": 0}.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusion_lv.main", f"--workdir={tmp_path / 'term'}", *long_run],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(tmp_path / "term" / "tensorboard"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == main_lib.EXIT_PREEMPTED, out[-2000:]
    assert "stopped by SIGTERM" in out
    assert run_dir.has_checkpoints(str(tmp_path / "term"))

    blow_up = [*TINY_FLAGS, "--config.optimizer.learning_rate=1e30",
               "--config.optimizer.grad_clip=0.0", "--config.training.num_steps=40",
               "--config.training.checkpoint_every=0"]  # only the final save could write one
    proc, _ = cli(f"--workdir={tmp_path / 'nan'}", *blow_up, timeout=300)
    assert proc.returncode == main_lib.EXIT_NONFINITE, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr
    assert not run_dir.has_checkpoints(str(tmp_path / "nan"))
