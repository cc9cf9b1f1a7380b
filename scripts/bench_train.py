"""Train-step speed of the default MLP config on this machine, against its own matmul peak.

Prints markdown: compile time and steps/s of the compiled train step for a few variants (updates
per call, global batch), the FLOPs of one update (XLA's cost analysis of a one-update program,
and a count of the dense layers' multiply-adds), and achieved FLOP/s as a fraction of the
float32 matmul FLOP/s measured in the same process. Ratios are against the first row.

    python scripts/bench_train.py [--config configs/default.py] [--seconds 5]
    python scripts/bench_train.py --torch [--widths 64,256]   # against PyTorch eager

``--torch`` runs the same step written in PyTorch (scripts/torch_reference.py; the optional
``torch`` extra) alternately with the project's and prints the examples/s ratio per width.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
from train_timing import one_update_flops, time_step, time_train_step

from diffusion_lv import config_files
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.models import param_count
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_flops(m: int, k: int, n: int, seconds: float = 1.5) -> float:
    """float32 FLOP/s of an ``(m, k) @ (k, n)`` matmul: the best of repeated timed batches."""
    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    reps = max(1, int(2e8 // (2 * m * k * n)))
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            out = matmul(a, b)
        out.block_until_ready()
        best = max(best, reps * 2 * m * k * n / (time.perf_counter() - start))
    return best


def counted_flops(params, batch: int) -> float:
    """Multiply-adds of every dense kernel, forward + backward (x3), per update."""
    kernels = [p for p in jax.tree.leaves(params) if p.ndim == 2]
    forward = 2.0 * batch * sum(int(k.shape[0]) * int(k.shape[1]) for k in kernels)
    return 3.0 * forward


def bench_variant(experiment, batch: int, steps_per_call: int, seconds: float,
                  flops: bool = True) -> dict:
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    mesh = step_lib.make_mesh()
    fn = step_lib.make_train_step(
        experiment.network.apply, experiment.parameterization, experiment.loss, optimizer,
        experiment.training.ema_decays, mesh, experiment.training.bucket_edges,
    )
    state = state_lib.create_train_state(
        experiment.network, optimizer, 0, experiment.data_shape,
        len(experiment.training.ema_decays),
    )
    state = jax.device_put(state, step_lib.replicated(mesh))
    batches = step_lib.make_batch_fn(experiment.dataset_fn, jax.random.PRNGKey(1), batch, mesh)
    state, compile_seconds, steps_per_sec = time_train_step(
        fn, state, batches, steps_per_call, seconds
    )
    return {
        "compile_s": compile_seconds,
        "steps_per_sec": steps_per_sec,
        "xla_flops": one_update_flops(fn, state, batches(0, 1)) if flops else float("nan"),
        "counted_flops": counted_flops(state.params, batch),
        "params": param_count(state.params),
    }


def torch_comparison(config_path: str, widths: list[int], unet_config: str | None,
                     seconds: float, rounds: int) -> None:
    """The project's compiled step against the same step in PyTorch eager
    (scripts/torch_reference.py), run alternately in this process: medians of ``rounds``."""
    try:
        import torch
        from torch_reference import TrainStep
    except ImportError:
        print("PyTorch is not installed: the comparison is skipped "
              "(pip install -e '.[torch]' to run it)")
        return
    print(f"## The same train step in PyTorch {torch.__version__} eager "
          f"({torch.get_num_threads()} threads), alternating, median of {rounds} x {seconds:g} s\n")
    print("| model | params | batch | JAX examples/s | PyTorch examples/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    cases = []
    for width in widths:
        config = config_files.load_config(config_path)
        config.model.width = width
        cases.append((f"MLP width {width} ({os.path.relpath(config_path, ROOT)})", config))
    if unet_config:
        cases.append((f"U-Net ({os.path.relpath(unet_config, ROOT)})",
                      config_files.load_config(unet_config)))
    for name, config in cases:
        experiment = experiment_lib.parse(config)
        batch, per_call = experiment.training.batch_size, experiment.training.steps_per_call
        image = len(experiment.data_shape) == 3
        reference = TrainStep(experiment, batch)
        jax_rates, torch_rates = [], []
        for _ in range(rounds):
            if image:  # the loop's image step: one unrolled update per call on CPU
                jax_rates.append(time_step(experiment, batch, jax.devices()[:1],
                                           seconds=seconds)["images_per_sec"])
            else:
                jax_rates.append(bench_variant(experiment, batch, per_call, seconds,
                                               flops=False)["steps_per_sec"] * batch)
            torch_rates.append(time_torch_step(reference, seconds, per_call) * batch)
        jax_rate, torch_rate = statistics.median(jax_rates), statistics.median(torch_rates)
        params = sum(p.numel() for p in reference.net.parameters())
        print(f"| {name} | {params:,} | {batch} | {jax_rate:,.0f} | {torch_rate:,.0f} | "
              f"{jax_rate / torch_rate:.2f} |")
    print("\nratio: JAX examples/s over PyTorch's (same network, preconditioning, loss, Adam, "
          "clip, EMAs, batch; both draw their data on the fly).")


def time_torch_step(reference, seconds: float, sync_every: int) -> float:
    """Updates per second of the PyTorch step, reading the loss every ``sync_every`` updates."""
    for _ in range(3):  # warm-up (allocator, threads)
        reference.step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps == 0:
        loss = reference.step()
        steps += 1
        if steps % sync_every == 0:
            loss.item()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per variant")
    parser.add_argument("--torch", action="store_true",
                        help="only the comparison with the same step in PyTorch eager")
    parser.add_argument("--widths", default="64,256", help="MLP widths of the comparison")
    parser.add_argument("--unet-config", default=os.path.join(ROOT, "configs", "digits",
                                                              "ve_karras.py"),
                        help="image config of the comparison's U-Net row ('' for none)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (comparison)")
    args = parser.parse_args()
    if args.torch:
        widths = [int(w) for w in args.widths.split(",")]
        torch_comparison(args.config, widths, args.unet_config, args.seconds, args.rounds)
        return
    experiment = experiment_lib.parse(config_files.load_config(args.config))
    batch, per_call = experiment.training.batch_size, experiment.training.steps_per_call
    variants = [(batch, 1), (batch, per_call), (4 * batch, per_call)]

    # The machine may be shared: measure the peak around every variant and keep the best.
    peaks, rows = [matmul_flops(1024, 1024, 1024)], []
    for b, k in variants:
        rows.append((b, k, bench_variant(experiment, b, k, args.seconds)))
        peaks.append(matmul_flops(1024, 1024, 1024))
    peak = max(peaks)
    width = experiment.network.width
    hidden = width * experiment.network.expansion
    layer = matmul_flops(batch, width, hidden)

    print(f"## Train step, {os.path.relpath(args.config, ROOT)} "
          f"({rows[0][2]['params']:,} params, {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})\n")
    print(f"float32 matmul 1024x1024x1024: best {peak / 1e9:.1f} GFLOP/s of {len(peaks)} "
          f"measurements (min {min(peaks) / 1e9:.1f}); at the model's layer shape "
          f"{batch}x{width}x{hidden}: {layer / 1e9:.1f} GFLOP/s\n")
    print("| global batch | updates/call | compile (s) | steps/s | ratio | MFLOP/update "
          "(XLA / counted) | GFLOP/s (XLA) | of matmul peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0][2]["steps_per_sec"] * rows[0][0]
    for b, k, r in rows:
        achieved = r["xla_flops"] * r["steps_per_sec"]
        print(
            f"| {b} | {k} | {r['compile_s']:.2f} | {r['steps_per_sec']:.1f} | "
            f"{r['steps_per_sec'] * b / base:.2f} | {r['xla_flops'] / 1e6:.1f} / "
            f"{r['counted_flops'] / 1e6:.1f} | {achieved / 1e9:.2f} | "
            f"{100 * achieved / peak:.1f}% |"
        )
    print("\nratio: examples/s relative to the first row. FLOP/s uses XLA's count of one update.")


if __name__ == "__main__":
    main()
