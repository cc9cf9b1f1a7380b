"""Two processes on 127.0.0.1 form one 4-device job; the same parameters as one 4-device process.

Each process forces 2 host devices (``XLA_FLAGS`` before jax is imported), joins the job with
``jax.distributed.initialize('127.0.0.1:PORT', 2, i)`` (gloo CPU collectives) and trains a tiny
toy config with plain SGD through ``training.train``: a gradient scaled by the process or device
count would show as a larger update (Adam would hide it). Every draw is a function of (seed,
step, example index), so the 2x2 job and a single 4-device process train on the same global
batch and must agree up to float summation order. Then one process of a second job is killed
(SIGKILL) after a checkpoint; the job (both processes, as a scheduler would restart it) starts
again and resumes from the last finalised checkpoint to the same final parameters.

Every subprocess wait has a timeout and children are killed on failure; ports come from binding
port 0. The kill-and-resume test is marked slow (``--runslow``).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 120  # per job; a healthy job here takes ~10-20 s
# Plain SGD at a constant rate (no clipping): a wrong gradient scale changes the update.
TINY = {
    "model.width": 16, "model.num_blocks": 1, "model.embedding_features": 8,
    "optimizer.name": "sgd", "optimizer.learning_rate": 0.05, "optimizer.warmup_steps": 0,
    "optimizer.decay": "constant", "optimizer.grad_clip": 0.0,
    "training.batch_size": 32, "training.num_steps": 8, "training.steps_per_call": 2,
    "training.log_every": 2, "training.checkpoint_every": 2, "training.keep_checkpoints": 8,
    "training.sample_every": 0, "training.ema_decays": (0.9,),
    "eval.num_samples": 256, "eval.num_projections": 16, "eval.repeats": 1,
    "eval.nll_examples": 0,
}

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[4]
    import jax, numpy as np
    port, nproc, pid, _, workdir, slow = sys.argv[1:7]
    nproc, pid, slow = int(nproc), int(pid), float(slow)
    from diffusion_lv import experiment as experiment_lib
    from diffusion_lv import distributed, training
    if nproc > 1:
        distributed.initialize("explicit", "127.0.0.1:" + port, nproc, pid)
    assert jax.device_count() == 4, jax.devices()
    from diffusion_lv.config_files import load_config
    config = load_config(os.path.join(os.getcwd(), "configs", "default.py"))
    for dotted, value in json.loads(sys.argv[7]).items():
        section, key = dotted.split(".")
        config[section][key] = tuple(value) if isinstance(value, list) else value
    e = experiment_lib.parse(config)
    after_call = (lambda state: time.sleep(slow)) if slow else None
    result = training.train(
        workdir, e.network, e.parameterization, e.loss, e.optimizer, e.training, e.dataset_fn,
        e.data_shape, console=False, after_call=after_call,
    )
    params = distributed.to_host(result.state.params)
    leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(params)]
    with open(os.path.join(workdir, f"params_{pid}.json"), "w") as f:
        json.dump({"step": int(result.state.step), "params": leaves,
                   "processes": jax.process_count()}, f)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def launch(workdir, nproc: int, devices_each: int, slow: float = 0.0):
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, port, str(nproc), str(pid), str(devices_each),
             str(workdir), str(slow), json.dumps(TINY)],
            cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        for pid in range(nproc)
    ]


def kill(procs):
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def finish(procs, timeout=WAIT_S) -> list[str]:
    """Wait for every process (one deadline); kill all on timeout or failure."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
            assert proc.returncode == 0, out[-4000:]
    finally:
        kill(procs)
    return outputs


def params(workdir, pid):
    with open(os.path.join(workdir, f"params_{pid}.json")) as f:
        return json.load(f)


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    assert len(a["params"]) == len(b["params"])
    for x, y in zip(a["params"], b["params"], strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    finish(launch(workdir, 1, 4))
    return params(workdir, 0)


def test_two_processes_match_one_four_device_process(single, tmp_path):
    finish(launch(tmp_path, 2, 2))
    first, second = params(tmp_path, 0), params(tmp_path, 1)
    assert first["processes"] == second["processes"] == 2 and single["processes"] == 1
    assert first["step"] == second["step"] == single["step"] == 8
    assert first["params"] == second["params"]  # one job: bit-identical replicas
    assert_same(first, single)


def launch_main(workdir, nproc: int):
    """The job through main's CLI: --coordinator_address / --num_processes / --process_id."""
    port = free_port()
    overrides = [f"--config.{k}={format_value(v)}" for k, v in TINY.items()]
    env = {**environment(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "diffusion_lv.main", f"--workdir={workdir}",
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={nproc}",
             f"--process_id={pid}", *overrides],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        for pid in range(nproc)
    ]


def format_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ",)"
    return str(value)


@pytest.mark.slow  # ~65 s on a busy 2-core CPU: three job launches and an evaluation
def test_job_resumes_after_one_process_is_killed(single, tmp_path):
    procs = launch(tmp_path, 2, 2, slow=1.0)  # ~1 s per call of 2 updates: time to kill
    checkpoints = tmp_path / "checkpoints"
    deadline = time.monotonic() + WAIT_S
    try:
        while not (checkpoints / "4").is_dir():  # finalised (the temporary folder has a suffix)
            assert time.monotonic() < deadline, "no checkpoint at step 4"
            assert all(p.poll() is None for p in procs), procs[0].stdout.read()[-4000:]
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait(timeout=10)
    finally:
        kill(procs)  # the job is gone; a scheduler restarts all of its processes
    assert not (tmp_path / "params_0.json").exists()  # it did not finish
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 4 in saved and max(saved) < 8, saved

    # The same job again, through main's flags: it resumes, trains to 8, process 0 reports.
    first, second = finish(launch_main(tmp_path, 2))
    assert f"resumed from checkpoint at step {max(saved)}" in first, first[-4000:]
    assert "resumed" not in second and "metrics.json" not in second, second[-4000:]
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["step"] == 8

    from diffusion_lv import evaluate
    from diffusion_lv import experiment as experiment_lib
    from diffusion_lv.config_files import load_config

    config = load_config(os.path.join(ROOT, "configs", "default.py"))
    for dotted, value in TINY.items():
        section, key = dotted.split(".")
        config[section][key] = value
    state = evaluate.restore_checkpoint(experiment_lib.parse(config), str(tmp_path))
    assert int(state.step) == 8
    resumed = {"params": [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]}
    assert_same(resumed, single)


def test_bad_distributed_arguments_are_named_before_anything_starts():
    from diffusion_lv import distributed

    with pytest.raises(ValueError, match=r"'slurm' is not valid; valid choices: \['off'"):
        distributed.initialize("slurm")
    with pytest.raises(ValueError, match="num_processes=None"):
        distributed.initialize("explicit", "127.0.0.1:1234", None, 0)
    with pytest.raises(ValueError, match="must be host:port"):
        distributed.initialize("explicit", "127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed.initialize("explicit", "127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="only used with distributed mode 'explicit'"):
        distributed.initialize("auto", "127.0.0.1:1234")
    distributed.initialize("off")  # one process: nothing to start
    assert distributed.is_main_process() and jax.process_count() == 1


def test_main_rejects_bad_distributed_flags(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_lv.main", f"--workdir={tmp_path}",
         "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=5"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=WAIT_S,
    )
    assert proc.returncode != 0
    assert "process_id=5 must be in [0, num_processes=2)" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "config.json").exists()
