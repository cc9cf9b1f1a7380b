"""The accelerator check: every figure a GPU/TPU user asks about, as one markdown table.

On whatever devices JAX sees (one modern GPU: under 8 minutes with the default budget):

* the CIFAR-10 EDM/DDPM++ and MNIST U-Net train steps in float32 and bfloat16 compute at two
  batch sizes: images/s, achieved TFLOP/s (XLA's cost analysis of the program timed), compile
  time, the program's memory (XLA's memory analysis) and the allocator's peak so far;
* the loss of the first bfloat16 update against the float32 one on the same batch and noise;
* sampler throughput (images/s) of the recommended sampler (``dpmpp_3m``, log-SNR grid) at NFE
  20 and 35 on the CIFAR U-Net, and one lax.scan against a Python loop of jitted steps (the same
  Euler step) at batch 1 and at a large batch;
* probability-flow NLL of a batch of CIFAR-sized images (Hutchinson, one probe): the in-graph
  solve (``likelihood.make_likelihood_fn``) against the host-solver layout of
  scripts/bench_likelihood.py (scipy RK45 around a jitted vector field);
* with more than one device: the data-parallel step against one device under plain SGD (equal
  parameters) and the scaling efficiency from 1 to all devices at a fixed per-device batch.

Random weights and random images: throughput does not depend on their values, and nothing is
downloaded. ``--smoke`` runs the same code on tiny networks and batches (CPU, under 2 minutes;
tests/test_device_check.py runs it with two forced host devices, so the script cannot rot; its
MNIST rows are skipped, as they run the CIFAR rows' code, and its data-parallel rows use the
quick-start MLP).

    python scripts/device_check.py [--smoke] [--budget 420]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import traceback

import jax
import jax.numpy as jnp
from bench_likelihood import scipy_solver
from bench_train_images import load
from train_timing import best_time, synthetic_images, time_step

from diffusion_lv import evaluate, samplers
from diffusion_lv.likelihood import LikelihoodConfig, make_likelihood_fn
from diffusion_lv.parameterization import bind
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib

CIFAR, MNIST = "configs/cifar10/edm_ve.py", "configs/mnist/edm_ve.py"
# A U-Net small enough to compile in seconds on a CPU: the smoke run's stand-in for both.
TINY_UNET = {"model.channels": 8, "model.channel_mult": (1, 2), "model.num_blocks": 1,
             "model.attn_resolutions": (), "model.dropout": 0.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Batch sizes and timings of a run (full or smoke)."""

    cifar_batches: tuple[int, ...] = (128, 256)
    mnist_batches: tuple[int, ...] = (128, 512)
    sample_batch: int = 256
    nll_batch: int = 64
    per_device_batch: int = 64
    parallel_config: str = MNIST
    seconds: float = 3.0
    overrides: tuple = ()


FULL = Sizes()
# The MNIST rows run the CIFAR rows' code; the data-parallel rows use the quick-start MLP.
SMOKE = Sizes(cifar_batches=(2,), mnist_batches=(), sample_batch=4, nll_batch=2,
              per_device_batch=8, parallel_config="configs/default.py", seconds=0.2,
              overrides=tuple(TINY_UNET.items()))


class Table:
    """Rows of (check, conditions, result); a check that raises is a row saying so, and a check
    past the time budget is skipped, so one failure never loses the rest of the table."""

    def __init__(self, budget: float):
        self.rows, self.deadline = [], time.perf_counter() + budget

    def add(self, check: str, conditions: str, result: str) -> None:
        self.rows.append((check, conditions, result))
        print(f"  {check} | {conditions} | {result}", file=sys.stderr, flush=True)

    def run(self, check: str, fn, *args) -> None:
        if time.perf_counter() > self.deadline:
            self.add(check, "-", "skipped: time budget spent (--budget)")
            return
        try:
            fn(self, *args)
        except Exception as err:  # noqa: BLE001 - reported in the table, the rest still runs
            traceback.print_exc()
            self.add(check, "-", f"FAILED: {type(err).__name__}: {str(err).splitlines()[0]}")

    def markdown(self) -> str:
        lines = ["| check | conditions | result |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows]
        return "\n".join(lines)


def environment() -> str:
    device = jax.devices()[0]
    backend = jax.extend.backend.get_backend()
    import jaxlib

    return "\n".join([
        f"- devices: {jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"{jax.process_count()} process(es)",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, platform version "
        f"{backend.platform_version}",
        f"- python {platform.python_version()}, {os.cpu_count()} host cores",
    ])


def experiment_for(path: str, sizes: Sizes, **overrides):
    return load(path, {**dict(sizes.overrides), **overrides})


def memory_text(compiled) -> str:
    analysis = compiled.memory_analysis()
    program = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    text = f"program {program / 2**30:.2f} GiB"
    return text + (f", allocator peak so far {peak / 2**30:.2f} GiB" if peak else "")


def batch_loss(experiment, params, batch: int):
    """The training loss of ``params`` on a fixed batch with fixed times and noise."""
    x0 = synthetic_images(experiment.data_shape)(jax.random.PRNGKey(5), batch)
    keys = jax.random.split(jax.random.PRNGKey(6), batch)
    model = experiment.parameterization
    model_fn = model.model_fn(bind(experiment.network.apply, params))
    per_example, _ = step_lib.per_example_loss(model_fn, x0, keys, model, experiment.loss)
    return float(jnp.mean(per_example))


def train_step_rows(table: Table, path: str, batches: tuple[int, ...], sizes: Sizes) -> None:
    name = "CIFAR-10 EDM DDPM++" if "cifar" in path else "MNIST EDM U-Net"
    for batch in batches:
        experiments = {}
        for dtype in ("float32", "bfloat16"):
            experiment = experiment_for(path, sizes, **{"training.batch_size": batch,
                                                        "model.dtype": dtype})
            experiments[dtype] = experiment
            r = time_step(experiment, batch, jax.devices()[:1], seconds=sizes.seconds)
            tflops = r["flops"] * r["images_per_sec"] / batch / 1e12
            table.add(f"train step, {name}", f"{dtype} compute, batch {batch}, 1 device",
                      f"{r['images_per_sec']:.1f} images/s, {tflops:.2f} TFLOP/s, compile "
                      f"{r['compile_s']:.1f} s, {memory_text(r['compiled'])}")
        # Random weights everywhere (the output layer is zero at initialisation, which would
        # make both losses equal whatever the compute dtype does).
        params = state_lib.init_params(experiments["float32"].network, jax.random.PRNGKey(0),
                                       experiments["float32"].data_shape)
        leaves, tree = jax.tree.flatten(params)
        noise = jax.random.split(jax.random.PRNGKey(7), len(leaves))
        params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape, p.dtype)
                                           for p, k in zip(leaves, noise, strict=True)])
        losses = {d: batch_loss(e, params, batch) for d, e in experiments.items()}
        rel = abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])
        table.add(f"bf16 loss check, {name}", f"batch {batch}, same float32 weights, batch, "
                  "times and noise", f"loss f32 {losses['float32']:.5f}, bf16 "
                  f"{losses['bfloat16']:.5f}, relative difference {rel:.2e}")


def unet_model(sizes: Sizes):
    experiment = experiment_for(CIFAR, sizes)
    params = state_lib.init_params(experiment.network, jax.random.PRNGKey(0),
                                   experiment.data_shape)
    return experiment, params


def sampler_rows(table: Table, sizes: Sizes) -> None:
    experiment, params = unet_model(sizes)
    model, shape = experiment.parameterization, experiment.data_shape
    for nfe in (20, 35):
        config = samplers.SamplerConfig(name="dpmpp_3m", nfe=nfe, grid="log_snr")
        draw = evaluate.make_sampler(experiment.network.apply, model, config,
                                     (sizes.sample_batch, *shape))
        start = time.perf_counter()
        draw(params, jax.random.PRNGKey(0))
        compile_s = time.perf_counter() - start
        seconds = best_time(lambda draw=draw: draw(params, jax.random.PRNGKey(1))[0])
        table.add("sampler throughput, CIFAR U-Net", f"dpmpp_3m log-SNR grid, NFE {nfe}, "
                  f"batch {sizes.sample_batch}",
                  f"{sizes.sample_batch / seconds:.1f} images/s (first call {compile_s:.1f} s)")

    denoiser = model.ve_denoiser(model.model_fn(
        lambda *a: experiment.network.apply(params, *a)))
    sigmas = jnp.asarray(samplers.SamplerConfig(name="euler", nfe=20).sigmas(model.schedule),
                         jnp.float32)

    def euler_step(z, levels):
        sigma, sigma_next = levels[0], levels[1]
        d = (z - denoiser(z, jnp.full(z.shape[:1], sigma))) / sigma
        return z + (sigma_next - sigma) * d

    pairs = jnp.stack([sigmas[:-1], sigmas[1:]], axis=1)
    scanned = jax.jit(lambda z: jax.lax.scan(lambda c, p: (euler_step(c, p), None), z, pairs)[0])
    step = jax.jit(euler_step)
    host_pairs = list(pairs)

    def looped(z):
        for levels in host_pairs:
            z = step(z, levels)
        return z

    for batch in (1, sizes.sample_batch):
        z = sigmas[0] * jax.random.normal(jax.random.PRNGKey(2), (batch, *shape))
        t_scan, t_loop = best_time(scanned, z), best_time(looped, z)
        same = float(jnp.max(jnp.abs(scanned(z) - looped(z))))
        table.add("compiled vs stepped sampler, CIFAR U-Net",
                  f"Euler, {len(host_pairs)} steps, batch {batch}",
                  f"lax.scan {t_scan * 1e3:.1f} ms vs loop of jitted steps {t_loop * 1e3:.1f} "
                  f"ms: {t_loop / t_scan:.2f}x; max difference {same:.1e}")


def nll_rows(table: Table, sizes: Sizes) -> None:
    experiment, params = unet_model(sizes)
    model = experiment.parameterization
    apply_fn = model.model_apply(experiment.network.apply)
    tol = 1e-3
    x = jax.random.uniform(jax.random.PRNGKey(3), (sizes.nll_batch, *experiment.data_shape),
                           jnp.float32, -1.0, 1.0)
    config = LikelihoodConfig(divergence="hutchinson", rtol=tol, atol=tol, error_norm="rms",
                              solver="dopri5")
    fn = make_likelihood_fn(apply_fn, model, config)
    key = jax.random.PRNGKey(4)
    in_graph = best_time(lambda: fn(params, x, key).nll, repeats=1)
    nfe = int(fn(params, x, key).nfe)
    probes = jax.random.rademacher(key, (1, *x.shape), jnp.float32)
    host = scipy_solver(apply_fn, params, x, probes, tol, fused=True, model=model)
    start = time.perf_counter()
    _, host_nfe, _ = host()
    host_s = time.perf_counter() - start
    table.add("PF-ODE NLL, CIFAR U-Net", f"batch {sizes.nll_batch}, Hutchinson 1 probe, "
              f"rtol=atol={tol:g}, Dormand-Prince 5(4), RMS norm",
              f"in-graph {sizes.nll_batch / in_graph:.2f} images/s ({nfe} NFE) vs host solver "
              f"{sizes.nll_batch / host_s:.2f} images/s ({host_nfe} NFE): "
              f"{host_s / in_graph:.2f}x")


def data_parallel_rows(table: Table, sizes: Sizes) -> None:
    devices = jax.devices()
    if len(devices) < 2:
        table.add("data parallelism", f"{len(devices)} device", "skipped: needs 2+ devices")
        return
    import optax

    overrides = {} if sizes.parallel_config != MNIST else {**dict(sizes.overrides),
                                                          "model.dropout": 0.0}
    experiment = load(sizes.parallel_config, overrides)
    name = "MNIST U-Net" if sizes.parallel_config == MNIST else "quick-start MLP"
    global_batch = sizes.per_device_batch * len(devices)
    sgd = optax.sgd(1e-2)  # plain SGD: a gradient scaled by the device count cannot hide
    one = time_step(experiment, global_batch, devices[:1], sgd, seconds=0.0)
    every = time_step(experiment, global_batch, devices, sgd, seconds=0.0)
    pairs = list(zip(jax.tree.leaves(jax.device_get(one["state"].params)),
                     jax.tree.leaves(jax.device_get(every["state"].params)), strict=True))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
    scale = max(float(jnp.max(jnp.abs(a))) for a, _ in pairs)
    # Summing the gradient in another order moves each update by float32 rounding (~1e-7
    # relative); a gradient scaled by the device count moves it by the whole update.
    equal = int(one["state"].step) == int(every["state"].step) and diff <= 1e-5 * scale
    table.add("data-parallel step = 1 device (SGD)", f"{name}, global batch {global_batch}, "
              f"1 vs {len(devices)} devices, {int(one['state'].step)} updates",
              f"max parameter difference {diff:.1e} (largest parameter {scale:.2f}): "
              f"{'equal to float32 rounding' if equal else 'DIFFERENT'}")
    base = time_step(experiment, sizes.per_device_batch, devices[:1], seconds=sizes.seconds)
    scaled = time_step(experiment, global_batch, devices, seconds=sizes.seconds)
    efficiency = scaled["images_per_sec"] / (len(devices) * base["images_per_sec"])
    table.add("data-parallel scaling", f"{name}, {sizes.per_device_batch} images per "
              f"device, 1 -> {len(devices)} devices",
              f"{base['images_per_sec']:.1f} -> {scaled['images_per_sec']:.1f} images/s: "
              f"efficiency {100 * efficiency:.0f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, < 2 minutes)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which the remaining checks are skipped")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    table = Table(args.budget)
    table.run("train step, CIFAR-10", train_step_rows, CIFAR, sizes.cifar_batches, sizes)
    table.run("train step, MNIST", train_step_rows, MNIST, sizes.mnist_batches, sizes)
    table.run("sampler", sampler_rows, sizes)
    table.run("PF-ODE NLL", nll_rows, sizes)
    table.run("data parallelism", data_parallel_rows, sizes)
    print(f"## Device check{' (smoke: tiny networks and batches)' if args.smoke else ''}\n")
    print(environment() + "\n")
    print(table.markdown())
    print(f"\nRandom weights and images; {time.perf_counter() - start:.0f} s in all.")
    failed = [row for row in table.rows if row[2].startswith("FAILED")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
