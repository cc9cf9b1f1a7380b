"""Speed of FID feature extraction (``inception.FeatureExtractor``): markdown on stdout.

Images/s of the FID Inception-v3 (resize to 299x299, network, 2048 pool3 features) at a few
batch sizes and input shapes, with the compile time of each batch shape. Weights are random of
the true shapes unless ``--weights`` names pytorch-fid's file: the cost does not depend on their
values. Ratios are against the batch-50 row of the same input shape (pytorch-fid's default).

    python scripts/bench_inception.py [--seconds 20] [--batches 10,50] [--weights FILE]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from diffusion_lv.eval import inception

SHAPES = ((32, 32, 3), (8, 8, 1))  # CIFAR-10, digits


def random_variables(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in inception.state_dict_shapes().items():
        if name.endswith("running_var") or name.endswith("bn.weight"):
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) > 1:
            state[name] = (rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:])))
        else:
            state[name] = rng.normal(size=shape) * 0.1
    return inception.variables_from_state_dict(state)


def measure(variables, batch: int, shape, seconds: float) -> dict:
    extractor = inception.FeatureExtractor(variables, batch_size=batch)
    images = np.random.default_rng(1).uniform(-1, 1, (batch, *shape)).astype(np.float32)
    start = time.perf_counter()
    extractor(images)
    compile_s = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        extractor(images)
        count += 1
    return {"rate": count * batch / (time.perf_counter() - start), "compile": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batches", default="10,50")
    parser.add_argument("--weights", default="")
    args = parser.parse_args()
    variables = inception.load_variables(args.weights) if args.weights else random_variables()
    device = jax.devices()[0]
    print(f"backend: {jax.default_backend()} ({device.device_kind}), {jax.device_count()} "
          f"device(s); weights: {args.weights or 'random, true shapes'}\n")
    batches = [int(b) for b in args.batches.split(",")]
    for shape in SHAPES:
        rows = {b: measure(variables, b, shape, args.seconds) for b in batches}
        base = rows.get(inception.DEFAULT_BATCH_SIZE, rows[batches[0]])["rate"]
        print(f"### input {shape[0]}x{shape[1]}x{shape[2]} -> 299x299x3\n")
        print("| batch | images/s | ratio | compile + first batch (s) |")
        print("| ---: | ---: | ---: | ---: |")
        for b, row in rows.items():
            print(f"| {b} | {row['rate']:.1f} | {row['rate'] / base:.2f} | {row['compile']:.1f} |")
        print()


if __name__ == "__main__":
    main()
