"""Conditional samplers against exact conditionals of the Gaussian-mixture oracle; prints markdown.

Oracle problems (the model is the exact oracle x0-prediction in VE-Karras, so every error is the
sampler's): ``ring`` (8 modes, std 0.1, radius 2, 2-D), ``aniso16`` (8 components with random
full covariances, eigenvalues 0.01..1, centred) and ``gauss64`` (one Gaussian with the smooth
covariance ``exp(-(i-j)^2 / 18) + 0.01 I``, read as an 8x8 image for blur and downsampling).
Each mask pattern knows about half of the coordinates; the known values are those of a data
sample (seeded), and the reference is ``oracle.condition`` (``oracle.linear_gaussian_posterior``
for the blur / downsample observations, noise std 0.05, DPS only).

Metrics against ``n`` exact conditional samples: SW, the sliced Wasserstein-2 distance (its floor:
two independent exact samples, mean +- sd over 3 pairs; "at floor" means below mean + 3 sd) and,
where the conditional is Gaussian (gauss64), the KL divergence of the samples' fitted Gaussian
from the exact conditional (its floor: the same for exact samples; the fit's own bias is about
``d (d + 3) / (4 n)``). Rows are methods at equal NFE budgets (``info["nfe"]`` is the exact count,
which may be a few evaluations under the budget; DPS also takes one backward pass per step).

A summary table per problem gives replacement's best SW over the budgets against the floor and
the first budget at which the Langevin-corrected sampler and the particle filter (``smc``:
groups of 100 particles, 3 Langevin rejuvenation steps per level) are at the floor.

Digits: a VE-Karras (EDM) U-Net trained on scikit-learn's 8x8 digits
(``configs/digits/ve_karras.py``; with ``--quick`` a 16-channel, one-block version for 1500 steps
of batch 64), trained in ``--digits-workdir`` when it holds no run and reused when it does (any
trained digits run directory works, e.g. one of ``python -m diffusion_lv.main
--config=configs/digits/ve_karras.py``). The test images with the left half, the centre 4x4 or a
random 50% of pixels unknown are completed at one NFE budget by each method (the particle filter
with 8 particles per image: 8 completions each, scored together); reported: the
digits classifier's accuracy on the completions against the true labels and the Frechet
distance of the completions to the test split in its features (the originals score their own
accuracy and 0 with all 297 test images; the masked inputs, unknown pixels at 0, are the
baseline), and a grid: per mask, the masked input, each method's completions, the originals.

    python scripts/bench_conditional.py --quick   # n=1000, budgets 50/200/800; small digits net,
                                                  # 150 images at NFE 100
    python scripts/bench_conditional.py           # n=4000, budgets 50..3200; the digits config,
                                                  # all 297 test images at NFE 200

Outputs (figures, the digits run) go under ``--out`` (default ``runs/bench_conditional``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import oracle
from diffusion_lv.conditional import (
    ConditionalConfig,
    Inpainting,
    Observation,
    blur_operator,
    downsample_operator,
    operator_matrix,
    sample_conditional,
)
from diffusion_lv.eval.metrics import sliced_wasserstein
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import VEKarras

MODEL = Parameterization(VEKarras(), "x0")
GRID = dict(sigma_min=0.01, sigma_max=80.0)
OBS_NOISE = 0.05


def best_config(nfe: int, grid: dict = GRID) -> ConditionalConfig:
    """The Langevin-corrected sampler as tuned here: about 20 levels, the rest of the budget
    spent as inner steps (at equal NFE the split matters little, docs/conditional.md)."""
    k = max(1, nfe // 20 - 1)
    return ConditionalConfig(method="langevin", nfe=nfe, langevin_steps=k, step_scale=1.0, **grid)


def smc_config(nfe: int, particles: int | None = 100, grid: dict = GRID) -> ConditionalConfig:
    """The particle filter as tuned here: 3 Langevin rejuvenation steps per level (step scale
    1), groups of 100 particles (more independent paths of the known part than one group)."""
    return ConditionalConfig(
        method="smc", nfe=nfe, langevin_steps=3, step_scale=1.0, particles=particles, **grid
    )


LANGEVIN_BEST = "langevin best (k=nfe/20-1, s=1)"
BEST = "smc (k=3, s=1, groups of 100)"
METHODS = {
    "replacement (c=1)": lambda n: ConditionalConfig(method="replacement", nfe=n, **GRID),
    "replacement (c=2)": lambda n: ConditionalConfig(method="replacement", nfe=n, c=2.0, **GRID),
    "repaint (r=4, c=2)": lambda n: ConditionalConfig(method="repaint", nfe=n, resamples=4, **GRID),
    "dps (scale 1)": lambda n: ConditionalConfig(method="dps", nfe=n, **GRID),
    "langevin k=2, s=0.5": lambda n: ConditionalConfig(
        method="langevin", nfe=n, langevin_steps=2, **GRID
    ),
    "langevin k=2, s=0.5 noisy": lambda n: ConditionalConfig(
        method="langevin", nfe=n, langevin_steps=2, hold="noisy", **GRID
    ),
    LANGEVIN_BEST: best_config,
    "smc (k=0, groups of 100)": lambda n: ConditionalConfig(
        method="smc", nfe=n, particles=100, **GRID
    ),
    BEST: smc_config,
}


def _centred(gm):
    return gm.replace(means=gm.means - gm.mean())


def problems():
    """name -> (mixture, {pattern: mask}, image shape or None)."""
    rng = np.random.default_rng(0)
    image = np.zeros((8, 8), bool)
    image[2:6, 2:6] = True
    return {
        "ring": (
            oracle.ring(8, 2.0, 0.1),
            {"x1 known": np.array([True, False]), "x2 known": np.array([False, True])},
            None,
        ),
        "aniso16": (
            _centred(oracle.random_anisotropic(0, 16, 8)),
            {
                "first half": np.arange(16) < 8,
                "alternate": np.arange(16) % 2 == 0,
                "random 50%": rng.permutation(16) < 8,
            },
            None,
        ),
        "gauss64": (
            oracle.correlated_gaussian(64, 3.0, 0.01),
            {
                "left half": np.tile(np.arange(8) < 4, 8),
                "centre": ~image.ravel(),
                "random 50%": rng.permutation(64) < 32,
            },
            (8, 8),
        ),
    }


def gaussian_kl(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """KL(N(sample mean, sample cov) || N(mean, cov))."""
    m, s = samples.mean(0), np.cov(samples, rowvar=False)
    d = len(mean)
    inv = np.linalg.inv(cov)
    diff = m - mean
    logdet = np.linalg.slogdet(cov)[1] - np.linalg.slogdet(s)[1]
    return 0.5 * float(np.trace(inv @ s) + diff @ inv @ diff - d + logdet)


class Reference:
    """Exact samples of a conditional, SW to them, its floor and (Gaussian) the KL."""

    def __init__(self, exact: oracle.GaussianMixture, n: int, key):
        self.exact, self.n = exact, n
        self.samples = np.asarray(exact.sample(jax.random.fold_in(key, 0), n), np.float64)
        self.gaussian = exact.num_components == 1
        floors, kls = [], []
        for i in range(3):
            other = np.asarray(exact.sample(jax.random.fold_in(key, i + 1), n), np.float64)
            floors.append(self.sw(other))
            if self.gaussian:
                kls.append(self.kl(other))
        self.floor = (float(np.mean(floors)), float(np.std(floors)))
        self.kl_floor = float(np.mean(kls)) if kls else None

    def sw(self, x) -> float:
        return float(
            sliced_wasserstein(
                jnp.asarray(x, jnp.float32),
                jnp.asarray(self.samples, jnp.float32),
                jax.random.PRNGKey(7),
            )
        )

    def kl(self, x) -> float:
        return gaussian_kl(
            np.asarray(x, np.float64),
            np.asarray(self.exact.means[0], np.float64),
            np.asarray(self.exact.covariance(), np.float64),
        )

    def at_floor(self, sw: float) -> bool:
        return sw < self.floor[0] + 3 * self.floor[1]


def _sample(model_fn, key, condition, cfg, shape):
    return sample_conditional(model_fn, MODEL, key, condition, cfg, shape=shape)


def run_oracle(args, budgets) -> dict:
    results = {}  # (problem, pattern) -> {method: [(nfe, sw, kl), ...]}
    for name, (gm, patterns, image_shape) in problems().items():
        n, dim = args.n, gm.dim
        x_data = np.asarray(gm.sample(jax.random.PRNGKey(11), 1), np.float64)[0]
        model_fn = gm.model_fn(VEKarras(), "x0")
        conditions = {}
        for pattern, mask in patterns.items():
            exact = oracle.condition(gm, mask, x_data)
            values = jnp.broadcast_to(jnp.asarray(x_data, jnp.float32), (n, dim))
            conditions[pattern] = (Inpainting(jnp.asarray(mask), values), exact, ~mask)
        if image_shape is not None:
            for label, op in (
                ("blur (std 1)", blur_operator(image_shape, 1.0, flat=True)),
                ("downsample x2", downsample_operator(image_shape, 2, flat=True)),
            ):
                a = operator_matrix(op, (dim,))
                y = a @ x_data + OBS_NOISE * np.random.default_rng(1).standard_normal(a.shape[0])
                exact = oracle.linear_gaussian_posterior(gm, a, y, OBS_NOISE)
                obs = Observation(
                    op, jnp.broadcast_to(jnp.asarray(y, jnp.float32), (n, len(y))), OBS_NOISE
                )
                conditions[label] = (obs, exact, np.ones(dim, bool))
        for pattern, (condition, exact, unknown) in conditions.items():
            ref = Reference(exact, n, jax.random.PRNGKey(5))
            rows = results.setdefault((name, pattern), {"_ref": ref})
            for method, make in METHODS.items():
                if isinstance(condition, Observation) and not method.startswith("dps"):
                    continue
                for nfe in budgets:
                    cfg = make(nfe)
                    start = time.perf_counter()
                    run = jax.jit(functools.partial(_sample, model_fn, cfg=cfg, shape=(n, dim)))
                    x, info = run(jax.random.PRNGKey(3), condition)
                    x = np.asarray(x, np.float64)[:, unknown]
                    sw = ref.sw(x)
                    kl = ref.kl(x) if ref.gaussian else None
                    rows.setdefault(method, []).append((info["nfe"], sw, kl))
                    if args.verbose:
                        print(
                            f"  {name}/{pattern} {method} nfe={info['nfe']} sw={sw:.4f} "
                            f"({time.perf_counter() - start:.1f}s)",
                            flush=True,
                        )
    return results


def print_tables(results, budgets) -> None:
    for (name, pattern), rows in results.items():
        ref = rows["_ref"]
        print(
            f"\n### {name}, {pattern} (n = {ref.n}; SW floor {ref.floor[0]:.4f} +- "
            f"{ref.floor[1]:.4f}"
            + (f"; KL floor {ref.kl_floor:.3f}" if ref.gaussian else "")
            + ")\n"
        )
        head = " | ".join(f"NFE {b}" for b in budgets)
        print(f"| method | {head} |\n|---|" + "---|" * len(budgets))
        for method, cells in rows.items():
            if method == "_ref":
                continue
            text = []
            for nfe, sw, kl in cells:
                mark = "*" if ref.at_floor(sw) else ""
                text.append(
                    f"{sw:.4f}{mark}"
                    + (f" / {kl:.3f}" if kl is not None else "")
                    + ("" if nfe in budgets else f" ({nfe})")
                )
            print(f"| {method} | " + " | ".join(text) + " |")
    print(
        "\nCells: SW (/ KL where the conditional is Gaussian); * = at the Monte Carlo floor "
        "(SW < floor + 3 sd); (k): exact NFE used when under the budget."
    )


def print_summary(results, budgets) -> None:
    """Per problem: replacement's best SW against the floor, where the Langevin-corrected
    sampler and the particle filter reach the floor, and which method is best at the largest
    budget."""
    print(
        "\n### Summary (SW / floor; the floor's mean)\n\n"
        "| problem | replacement, best over budgets | Langevin best, largest budget | "
        "Langevin best at floor from NFE | SMC best, largest budget | SMC best at floor from NFE "
        "| best method at the largest budget |\n|---|---|---|---|---|---|---|"
    )
    for (name, pattern), rows in results.items():
        ref = rows["_ref"]
        if BEST not in rows:
            continue
        replacement = min(sw for m in rows if m.startswith("replacement") for _, sw, _ in rows[m])
        cells = []
        for method in (LANGEVIN_BEST, BEST):
            runs = rows[method]
            at_floor = next((str(nfe) for nfe, sw, _ in runs if ref.at_floor(sw)), "not reached")
            cells += [f"{runs[-1][1] / ref.floor[0]:.1f}", at_floor]
        best = min((m for m in rows if m != "_ref"), key=lambda m: rows[m][-1][1])
        print(
            f"| {name}, {pattern} | {replacement / ref.floor[0]:.1f} | {' | '.join(cells)} "
            f"| {best} |"
        )


def plot(results, budgets, out: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no figure")
        return None
    keys = list(results)
    cols = min(4, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        rows = results[key]
        ref = rows["_ref"]
        for method, cells in rows.items():
            if method != "_ref":
                ax.loglog([c[0] for c in cells], [c[1] for c in cells], "o-", label=method)
        ax.axhspan(
            ref.floor[0] - ref.floor[1], ref.floor[0] + 3 * ref.floor[1], color="grey", alpha=0.3
        )
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xlabel("NFE")
        ax.set_ylabel("SW to exact conditional")
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "conditional_oracle.png")
    fig.savefig(path, dpi=120)
    return path


# -- digits ----------------------------------------------------------------------------------

DIGITS_CONFIG = "configs/digits/ve_karras.py"
# A few minutes on a 2-core CPU: a quarter of the digits U-Net, for fewer steps of smaller batches.
QUICK_DIGITS = {
    "model.channels": 16,
    "model.num_blocks": 1,
    "training.batch_size": 64,
    "training.num_steps": 1500,
}


def train_digits(workdir: str, quick: bool) -> None:
    """Train the digits model into ``workdir`` as ``main`` would (its record, its checkpoints),
    with nothing periodic and no final evaluation: the benchmark measures it itself."""
    import sys

    from diffusion_lv import config_files, run_dir, training
    from diffusion_lv import experiment as experiment_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load_config(os.path.join(root, DIGITS_CONFIG))
    overrides = dict(QUICK_DIGITS) if quick else {}
    steps = overrides.get("training.num_steps", config.training.num_steps)
    overrides.update(
        {
            "training.log_every": steps,
            "training.checkpoint_every": 0,
            "training.sample_every": 0,
            "eval.nll_examples": 0,
        }
    )
    config.update_from_flattened_dict(overrides)
    exp = experiment_lib.parse(config)
    os.makedirs(workdir, exist_ok=True)
    run_dir.write_record(workdir, config, sys.argv, [str(d) for d in jax.devices()])
    start = time.perf_counter()
    training.train(
        workdir,
        exp.network,
        exp.parameterization,
        exp.loss,
        exp.optimizer,
        exp.training,
        exp.dataset_fn,
        exp.data_shape,
        console=False,
        make_batches=exp.make_batches,
    )
    print(
        f"\nTrained {DIGITS_CONFIG} {overrides if quick else ''} in {workdir} "
        f"({time.perf_counter() - start:.0f} s)"
    )


def digit_masks(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Known pixels (True), (n, 8, 8, 1) each: all but the left half, all but the centre 4x4,
    a random half of the pixels (one draw per image)."""
    cols = np.arange(8)
    left = np.broadcast_to((cols >= 4)[None, None, :, None], (n, 8, 8, 1))
    centre = np.ones((8, 8), bool)
    centre[2:6, 2:6] = False
    random = np.random.default_rng(seed).random((n, 8, 8, 1)) < 0.5
    return {
        "left half unknown": left,
        "centre unknown": np.broadcast_to(centre[None, :, :, None], (n, 8, 8, 1)),
        "random 50% unknown": random,
    }


DIGITS_PARTICLES = 8  # the particle filter's completions per test image


def digits_methods(budget: int, grid: dict) -> dict[str, ConditionalConfig]:
    return {
        "replacement (c=1)": ConditionalConfig(method="replacement", nfe=budget, **grid),
        "repaint (r=4, c=2)": ConditionalConfig(method="repaint", nfe=budget, resamples=4, **grid),
        "dps (scale 1)": ConditionalConfig(method="dps", nfe=budget, **grid),
        LANGEVIN_BEST: best_config(budget, grid),
        f"smc (k=3, s=1, {DIGITS_PARTICLES} particles per image)": smc_config(
            budget, DIGITS_PARTICLES, grid
        ),
    }


def run_digits(workdir: str, out: str, budget: int, num: int, quick: bool) -> None:
    import diffusion_lv
    from diffusion_lv import run_dir
    from diffusion_lv.eval import digits_features, image_grid

    if not run_dir.has_checkpoints(workdir):
        train_digits(workdir, quick)
    run = diffusion_lv.load_run(workdir)
    model, model_fn = run.model, run.model_fn
    net = run.config.model
    images, labels = digits_features.scaled_split("test")
    num = min(num, len(images))
    images, labels = images[:num].astype(np.float32), labels[:num]
    classifier = digits_features.classifier()

    def scores(x, copies=1):
        """Accuracy against the labels and the Frechet distance, over all ``copies``
        completions of each image (rows ``i * copies ...``)."""
        x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
        predicted = classifier.predict(x.reshape(len(x), -1))
        accuracy = float(np.mean(predicted == np.repeat(labels, copies)))
        return accuracy, digits_features.digits_frechet_distance(x)

    lo, hi = model.schedule.sigma_ve_min, model.schedule.sigma_ve_max
    grid = dict(sigma_min=max(lo, 0.01), sigma_max=min(hi, 80.0))
    configs = digits_methods(budget, grid)
    accuracy, fd = scores(images)
    print(
        f"\n### Digits inpainting ({num} test images; {workdir}: {net.channels}-channel U-Net, "
        f"{run.step} steps; NFE budget {budget})\n\n"
        f"Originals: accuracy {accuracy:.3f}, Frechet distance {abs(fd):.2f} (train-vs-test "
        f"floor at this size {digits_features.digits_frechet_floor(num):.2f}).\n"
    )
    print("| mask | method | NFE | accuracy | Frechet distance |\n|---|---|---|---|---|")
    picture_rows = []
    for mask_name, mask in digit_masks(num).items():
        masked = np.where(mask, images, 0.0)  # unknown pixels grey: visibly not data
        picture_rows.append(masked[:8])
        accuracy, fd = scores(masked)
        print(f"| {mask_name} | masked input (unknown = 0) | 0 | {accuracy:.3f} | {fd:.2f} |")
        for method, cfg in configs.items():
            copies = dict(cfg.options).get("particles") or 1  # the filter: a group per image
            repeated = Inpainting(
                jnp.asarray(np.repeat(mask, copies, 0)), jnp.asarray(np.repeat(images, copies, 0))
            )
            sample = jax.jit(
                lambda key, cond, cfg=cfg: sample_conditional(model_fn, model, key, cond, cfg)
            )
            x, info = sample(jax.random.PRNGKey(0), repeated)
            accuracy, fd = scores(x, copies)
            print(f"| {mask_name} | {method} | {info['nfe']} | {accuracy:.3f} | {fd:.2f} |")
            picture_rows.append(np.clip(np.asarray(x), -1.0, 1.0)[::copies][:8])
        picture_rows.append(images[:8])
    path = image_grid.save_image_grid(
        np.concatenate(picture_rows), os.path.join(out, "digits_inpainting.png"), num_cols=8
    )
    print(
        f"\nGrid (rows per mask: masked input, {', '.join(configs)}, originals): {path}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="n=1000, budgets 50/200/800; digits: small net, 150 images, NFE 100",
    )
    parser.add_argument("--n", type=int, default=None, help="samples per cell (default 4000)")
    parser.add_argument("--budgets", type=int, nargs="*", default=None)
    parser.add_argument("--out", default=os.path.join("runs", "bench_conditional"))
    parser.add_argument(
        "--digits-workdir",
        default=None,
        help="a digits run directory: reused if trained, else trained there "
        "(default: <out>/digits, <out>/digits_quick with --quick)",
    )
    parser.add_argument("--digits-nfe", type=int, default=None, help="default 200 (quick: 100)")
    parser.add_argument(
        "--digits-num", type=int, default=None, help="test images, at most 297 (quick: 150)"
    )
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    budgets = args.budgets or ([50, 200, 800] if args.quick else [50, 200, 800, 3200])
    args.n = args.n or (1000 if args.quick else 4000)
    args.digits_nfe = args.digits_nfe or (100 if args.quick else 200)
    args.digits_num = args.digits_num or (150 if args.quick else 297)
    start = time.perf_counter()
    results = run_oracle(args, budgets)
    print_tables(results, budgets)
    print_summary(results, budgets)
    path = plot(results, budgets, args.out)
    if path:
        print(f"\nFigure: {path}")
    if not args.skip_digits:
        workdir = args.digits_workdir or os.path.join(
            args.out, "digits_quick" if args.quick else "digits"
        )
        run_digits(workdir, args.out, args.digits_nfe, args.digits_num, args.quick)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
