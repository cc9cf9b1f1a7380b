"""The main job end to end, on a tiny config: CLI, SIGKILL during a save, resume, eval, sample.

One subprocess runs the CLI and is killed with SIGKILL while orbax finalises the checkpoint of
step 6 (the test holds the save open by patching orbax's final rename in that process only).
The run is then resumed in this process; it must restart from step 4, the last complete
checkpoint, and end with exactly the parameters of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from diffusion_lv import evaluate
from diffusion_lv import main as main_lib
from diffusion_lv.config_files import load_config
from diffusion_lv.training import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "model.width": 16,
    "model.num_blocks": 1,
    "model.embedding_features": 8,
    "training.batch_size": 32,
    "training.num_steps": 8,
    "training.steps_per_call": 2,
    "training.log_every": 2,
    "training.checkpoint_every": 2,
    "training.keep_checkpoints": 3,
    "training.sample_every": 4,
    "sampler.nfe": 8,
    "eval.num_samples": 256,
    "eval.num_projections": 16,
    "eval.repeats": 1,
    "eval.nll_examples": 0,
}

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from orbax.checkpoint._src.path import atomicity

    marker = sys.argv[1]
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if self.get_final().name == "6":
            open(marker, "w").write("saving step 6")
            time.sleep(600)  # hold the save open until the test kills the process
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    from absl import app
    from diffusion_lv import main
    sys.argv = ["main"] + sys.argv[2:]
    app.run(main.main)
    """
)


def tiny_config():
    config = load_config(os.path.join(ROOT, "configs", "default.py"))
    for dotted, value in TINY.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def flat_leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    metrics = main_lib.run(tiny_config(), workdir, "train")
    return workdir, metrics


def test_sigkill_during_save_resumes_from_last_complete_checkpoint(straight_run, tmp_path):
    workdir, marker = str(tmp_path / "run"), str(tmp_path / "marker")
    overrides = [f"--config.{k}={v}" for k, v in TINY.items()]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, marker, f"--workdir={workdir}",
         f"--config={os.path.join(ROOT, 'configs', 'default.py')}", *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 300
    while not os.path.exists(marker):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached the save of step 6:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    checkpoint_dir = os.path.join(workdir, "checkpoints")
    leftovers = [name for name in os.listdir(checkpoint_dir) if "tmp" in name]
    assert leftovers, os.listdir(checkpoint_dir)  # the unfinished save of step 6
    checkpoints = Checkpointer(workdir, read_only=True)
    assert checkpoints.latest_step() == 4
    checkpoints.close()

    metrics = main_lib.run(tiny_config(), workdir, "train")
    straight_dir, straight_metrics = straight_run
    config = tiny_config()
    resumed = evaluate.restore_checkpoint(main_lib.experiment_lib.parse(config), workdir)
    reference = evaluate.restore_checkpoint(main_lib.experiment_lib.parse(config), straight_dir)
    assert int(resumed.step) == int(reference.step) == 8
    for a, b in zip(flat_leaves(resumed), flat_leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics["swd"] == straight_metrics["swd"]


def test_workdir_contents(straight_run):
    workdir, metrics = straight_run
    for name in ("metrics.json", "samples.png", "samples.npy", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
        "step_0000004.png", "step_0000008.png"
    ]
    assert any(f.startswith("events.out.tfevents") for f in
               os.listdir(os.path.join(workdir, "tensorboard")))
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == metrics
    for key in ("swd", "swd_floor", "swd_ratio", "within_2x_floor", "step", "nfe",
                "train_seconds"):
        assert key in saved
    assert saved["step"] == 8 and saved["nfe"] == 8
    assert saved["within_2x_floor"] == (saved["swd"] <= 2 * saved["swd_floor"])
    # 8 updates of a tiny network are far from the data: the criterion can fail.
    assert not saved["within_2x_floor"]
    assert np.load(os.path.join(workdir, "samples.npy")).shape == (256, 2)


def test_eval_and_sample_modes_use_the_latest_checkpoint(straight_run, tmp_path):
    workdir, train_metrics = straight_run
    record = {name: open(os.path.join(workdir, name), "rb").read()
              for name in ("samples.npy", "samples.png", "metrics.json", "config.json")}
    assert main_lib.run(tiny_config(), workdir, "sample") is None
    folder = os.path.join(workdir, "eval", "step_0000008-heun-nfe8-ema_0.995")
    assert np.load(os.path.join(folder, "samples.npy")).shape == (256, 2)
    assert json.load(open(os.path.join(folder, "eval_config.json")))["sampler"]["nfe"] == 8
    config = tiny_config()
    config.eval.nll_examples = 8
    metrics = main_lib.run(config, workdir, "eval")
    assert json.load(open(os.path.join(folder, "metrics.json")))["swd"] == metrics["swd"]
    # Training's record is never overwritten; every evaluation is one line of the history.
    for name, content in record.items():
        assert open(os.path.join(workdir, name), "rb").read() == content, name
    history = [json.loads(line) for line in open(os.path.join(workdir, "metrics_history.jsonl"))]
    assert [h["folder"] for h in history][-1] == os.path.relpath(folder, workdir)
    assert history[0]["folder"] == "." and "train_seconds" in history[0]
    assert metrics["step"] == 8 and metrics["params"] == "ema_0.995"
    assert metrics["swd"] == train_metrics["swd"]  # same params, sampler and keys
    # The NLL hook: a finite figure, and the true density's for the same points (ring8).
    assert metrics["nll_examples"] == 8 and np.isfinite(metrics["nll_bpd"])
    assert metrics["nll_bpd"] > metrics["nll_bpd_true_density"] - 0.5
    assert metrics["nll_bpd_standard_error"] > 0 and metrics["nll_data"] == "ring8 (fresh draws)"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main_lib.run(tiny_config(), str(tmp_path), "eval")


def test_eval_of_a_named_checkpoint(straight_run):
    """``eval.checkpoint_step`` restores that step (the run keeps 4, 6, 8); a step that was not
    kept is refused, naming the saved ones, before anything compiles."""
    workdir, _ = straight_run
    config = tiny_config()
    config.eval.checkpoint_step = 6
    experiment = main_lib.experiment_lib.parse(config)
    state = evaluate.restore_checkpoint(experiment, workdir)
    assert int(state.step) == 6
    latest = evaluate.restore_checkpoint(main_lib.experiment_lib.parse(tiny_config()), workdir)
    assert int(latest.step) == 8
    assert any(not np.array_equal(a, b)
               for a, b in zip(flat_leaves(state.params), flat_leaves(latest.params), strict=True))
    metrics = main_lib.run(config, workdir, "eval")
    assert metrics["step"] == 6
    config.eval.checkpoint_step = 2
    with pytest.raises(FileNotFoundError, match=r"checkpoint_step=2 .*valid choices: \[4, 6, 8\]"):
        main_lib.run(config, workdir, "eval")


def test_samples_drawn_in_calls_of_the_sample_batch_size(straight_run, capsys):
    """``eval.sample_batch_size`` splits the draw into compiled calls of that size (7 = 3 + 3 + 1,
    the last call's extra samples dropped) with one line for compiling and one for sampling;
    the calls use distinct keys, so no sample is repeated."""
    workdir, _ = straight_run
    config = tiny_config()
    config.eval.sample_batch_size = 3
    experiment = main_lib.experiment_lib.parse(config)
    params = experiment.eval_params(evaluate.restore_checkpoint(experiment, workdir))
    samples, nfe = evaluate.draw_samples(experiment, params, 7)
    assert samples.shape == (7, 2) and np.isfinite(samples).all()
    assert nfe == evaluate.draw_samples(experiment, params, 6)[1]
    assert len(np.unique(samples.round(6), axis=0)) == 7
    err = capsys.readouterr().err
    assert err.count("compiled the sampler") == 1, err  # the same batch shape: compiled once
    assert "compiled the sampler (heun at NFE 8, batch 3) and drew 3 samples" in err, err
    assert "sampled the remaining 4 with heun" in err and "sampled 6 with heun" in err, err


@pytest.mark.slow
def test_default_config_is_the_three_minute_main_job(tmp_path):
    """The README's first command: train, sample and evaluate on CPU within 3 minutes."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lv.main", f"--workdir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["within_2x_floor"], metrics
    assert np.isfinite(metrics["nll_bpd"])
    for name in ("samples.png", "checkpoints", "tensorboard"):
        assert (tmp_path / name).exists()
    assert elapsed < 180, f"{elapsed:.0f} s"
