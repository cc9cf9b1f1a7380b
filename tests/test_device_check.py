"""scripts/device_check.py stays runnable: its smoke mode runs every check (two forced host
devices, so the data-parallel rows run too), and a failing check is a row, not a lost table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")

CHECKS = [
    ("train step, CIFAR-10 EDM DDPM++", 2),  # float32 and bfloat16
    ("bf16 loss check, CIFAR-10 EDM DDPM++", 1),
    ("sampler throughput, CIFAR U-Net", 2),  # NFE 20 and 35
    ("compiled vs stepped sampler, CIFAR U-Net", 2),  # batch 1 and the large batch
    ("PF-ODE NLL, CIFAR U-Net", 1),
    ("data-parallel step = 1 device (SGD)", 1),
    ("data-parallel scaling", 1),
]


@pytest.mark.slow
def test_smoke_mode_runs_every_check():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    # A budget far past the smoke run: on a loaded machine it must still run every check.
    proc = subprocess.run([sys.executable, "device_check.py", "--smoke", "--budget", "3000"],
                          cwd=SCRIPTS, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for check, count in CHECKS:
        assert sum(row.startswith(f"| {check} |") for row in rows) == count, (check, rows)
    assert not any("FAILED" in row or "skipped" in row for row in rows), rows
    assert "equal to float32 rounding" in proc.stdout
    assert "- devices: 2 x" in proc.stdout and "jaxlib" in proc.stdout


def test_a_failing_check_is_a_row_and_the_rest_still_runs(monkeypatch, capsys):
    monkeypatch.syspath_prepend(SCRIPTS)
    import device_check

    table = device_check.Table(budget=60.0)

    def broken(table):
        raise RuntimeError("out of memory\nsecond line")

    table.run("broken check", broken)
    table.run("working check", lambda t: t.add("working check", "c", "fine"))
    late = device_check.Table(budget=-1.0)
    late.run("late check", lambda t: t.add("late check", "c", "ran"))
    assert table.rows == [("broken check", "-", "FAILED: RuntimeError: out of memory"),
                          ("working check", "c", "fine")]
    assert late.rows == [("late check", "-", "skipped: time budget spent (--budget)")]


def test_torch_comparison_without_torch_says_so(monkeypatch, capsys):
    import builtins

    monkeypatch.syspath_prepend(SCRIPTS)
    import bench_train

    real_import = builtins.__import__

    def without_torch(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "torch_reference"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_torch)

    bench_train.torch_comparison(os.path.join(ROOT, "configs", "default.py"), [64], None, 0.1, 1)
    assert "PyTorch is not installed: the comparison is skipped" in capsys.readouterr().out


def test_torch_reference_network_is_the_flax_network(monkeypatch):
    """With the Flax weights copied in, the PyTorch MLP gives the same outputs: the comparison
    times the same network (skipped where PyTorch is not installed)."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(SCRIPTS)
    import jax
    import numpy as np
    import torch_reference

    from diffusion_lv.models.mlp import MLP

    flax_net = MLP(width=16, num_blocks=2, expansion=2, embedding_features=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    c_noise = jax.random.normal(jax.random.PRNGKey(1), (5,))
    params = flax_net.init(jax.random.PRNGKey(2), x, c_noise)["params"]
    # Random output layer: the zero initialisation would hide everything before it.
    params["Dense_3"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    net = torch_reference.MLP(2, 16, 2, 2, 8, 16.0)

    def put(linear, dense):
        linear.weight.data = torch.tensor(np.asarray(dense["kernel"]).T.copy())
        linear.bias.data = torch.tensor(np.asarray(dense["bias"]).copy())

    def put_norm(norm, layer):
        norm.weight.data = torch.tensor(np.asarray(layer["scale"]).copy())
        norm.bias.data = torch.tensor(np.asarray(layer["bias"]).copy())

    put(net.emb1, params["Dense_0"])
    put(net.emb2, params["Dense_1"])
    put(net.inp, params["Dense_2"])
    for i, block in enumerate(net.blocks):
        p = params[f"ResidualBlock_{i}"]
        put_norm(block.norm, p["LayerNorm_0"])
        put(block.up, p["Dense_0"])
        put(block.emb, p["Dense_1"])
        put(block.down, p["Dense_2"])
    put_norm(net.norm, params["LayerNorm_0"])
    put(net.out, params["Dense_3"])
    expected = np.asarray(flax_net.apply({"params": params}, x, c_noise))
    got = net(torch.tensor(np.asarray(x)), torch.tensor(np.asarray(c_noise))).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_torch_reference_unet_has_the_flax_layout(monkeypatch):
    """The PyTorch digits U-Net has exactly the parameters of models/unet.py's (per layer
    shapes differ only by layout), and the same output shape (skipped without PyTorch)."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(SCRIPTS)
    import torch_reference

    from diffusion_lv import experiment as experiment_lib
    from diffusion_lv.config_files import load_config
    from diffusion_lv.models import unet

    experiment = experiment_lib.parse(load_config(os.path.join(ROOT, "configs", "digits",
                                                               "ve_karras.py")))
    net = torch_reference.network_for(experiment)
    expected = unet.param_counts(experiment.network, experiment.data_shape)["total"]
    assert sum(p.numel() for p in net.parameters()) == expected
    out = net(torch.zeros(3, 1, 8, 8), torch.zeros(3))
    assert tuple(out.shape) == (3, 1, 8, 8)
    step = torch_reference.TrainStep(experiment, 4)
    assert torch.isfinite(step.step())
