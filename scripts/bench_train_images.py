"""Train-step speed of the image configs: compile time and images/s, markdown on stdout.

Runs the training loop's own compiled step (``training.step.make_train_step``) on batches from
the image pipeline (``StepBatches``), for the digits configs and the CIFAR-10 DDPM++ / EDM
recipes at a small batch. CIFAR-10 reads ``tfds.testing.mock_data`` when the data set is not
prepared (random pixels of the right shape: the step's cost does not depend on their values).
Rows: updates per call as a ``lax.scan`` (how accelerators run it) and unrolled (how image
configs run on CPU: XLA:CPU runs convolution gradients inside loops far slower), float32 and,
on accelerators, bfloat16 compute. On GPU/TPU it also reports achieved FLOP/s (XLA's cost
analysis of one update). Ratios are against the first row of each table.

    python scripts/bench_train_images.py [--seconds 10] [--cifar-batch 8] [--skip-cifar]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import jax
from train_timing import one_update_flops, time_train_step

from diffusion_lv import config_files
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.data import images
from diffusion_lv.models import unet
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(config_path: str, overrides: dict):
    config = config_files.load_config(os.path.join(ROOT, config_path))
    config.update_from_flattened_dict(overrides)
    return experiment_lib.parse(config)


def data_context(experiment):
    """mock_data for TFDS sets that are not prepared here (no download is ever tried)."""
    if experiment.image_data.info.tfds_name is None:
        return contextlib.nullcontext(), "digits (real)"
    try:
        images.open_source(experiment.dataset, "train", experiment.image_data.data_dir)
        return contextlib.nullcontext(), "real"
    except images.DatasetNotPreparedError:
        import tensorflow_datasets as tfds

        return tfds.testing.mock_data(num_examples=1024), "mock (not prepared)"


def bench(experiment, steps_per_call: int, unroll: bool, seconds: float) -> dict:
    mesh = step_lib.make_mesh()
    batch = experiment.training.batch_size
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    start = time.perf_counter()
    state = state_lib.create_train_state(
        experiment.network, optimizer, 0, experiment.data_shape,
        len(experiment.training.ema_decays),
    )
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    state = jax.device_put(state, step_lib.replicated(mesh))
    fn = step_lib.make_train_step(
        experiment.network.apply, experiment.parameterization, experiment.loss, optimizer,
        experiment.training.ema_decays, mesh, experiment.training.bucket_edges, unroll,
    )
    context, source = data_context(experiment)
    with context:
        batches = experiment.image_data.step_batches(mesh, batch, seed=0)
        state, compile_seconds, steps_per_sec = time_train_step(
            fn, state, batches, steps_per_call, seconds
        )
        flops = None
        if jax.default_backend() != "cpu":
            flops = one_update_flops(fn, state, batches(0, 1))
        batches.close()
    return {
        "images_per_sec": steps_per_sec * batch,
        "steps_per_sec": steps_per_sec,
        "compile": compile_seconds,
        "init": init_seconds,
        "flops_per_step": flops,
        "source": source,
    }


def table(title: str, rows: list[tuple[str, dict]]) -> str:
    accel = any(r["flops_per_step"] for _, r in rows)
    head = "| variant | images/s | ratio | steps/s | compile (s) | init (s) |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if accel:
        head += " TFLOP/s |"
        rule += " ---: |"
    lines = [f"### {title}", "", head, rule]
    base = rows[0][1]["images_per_sec"]
    for name, r in rows:
        line = (
            f"| {name} | {r['images_per_sec']:.1f} | {r['images_per_sec'] / base:.2f} | "
            f"{r['steps_per_sec']:.2f} | {r['compile']:.1f} | {r['init']:.1f} |"
        )
        if accel:
            tflops = (r["flops_per_step"] or 0.0) * r["steps_per_sec"] / 1e12
            line += f" {tflops:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--digits-batch", type=int, default=128)
    parser.add_argument("--cifar-batch", type=int, default=8)
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    accel = jax.default_backend() != "cpu"
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{jax.device_count()} device(s)\n")

    digits = load("configs/digits/ve_karras.py", {"training.batch_size": args.digits_batch})
    print(f"digits U-Net: {unet.describe(digits.network, digits.data_shape)}\n")
    rows = [
        ("scan, 4 updates/call", bench(digits, 4, False, args.seconds)),
        ("unrolled, 4 updates/call", bench(digits, 4, True, args.seconds)),
        ("unrolled, 1 update/call", bench(digits, 1, True, args.seconds)),
    ]
    print(table(f"digits (configs/digits/ve_karras.py), batch {args.digits_batch}", rows))
    print()
    if args.skip_cifar:
        return
    for path in ("configs/cifar10/edm_ve.py", "configs/cifar10/ddpmpp_vp_ml.py"):
        fp32 = load(path, {"training.batch_size": args.cifar_batch})
        print(f"{path}: {unet.describe(fp32.network, fp32.data_shape)}\n")
        unroll = not accel
        label = "unrolled" if unroll else "scan"
        rows = [(f"float32, {label}, 1 update/call", bench(fp32, 1, unroll, args.seconds))]
        if accel:
            bf16 = load(path, {"training.batch_size": args.cifar_batch, "model.dtype": "bfloat16"})
            rows.append((f"bfloat16, {label}, 1 update/call", bench(bf16, 1, unroll,
                                                                    args.seconds)))
        print(table(f"{path}, batch {args.cifar_batch} (data: {rows[0][1]['source']})", rows))
        print()


if __name__ == "__main__":
    main()
