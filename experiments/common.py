"""What the experiments share: launching, workdirs, seeds, test mixtures, distances, reports.

An experiment is a module ``experiments/<name>.py`` with ``run(config, workdir) -> dict`` (no
flags, so tests call it in-process) that ends with::

    if __name__ == "__main__":
        common.launch(run, __file__)

``launch`` gives it ``--workdir`` and ``--config`` (default ``experiments/configs/<name>.py``;
``...py:full`` passes ``"full"`` to the config's ``get_config``) and prints ``table.md``.

Conventions:

* Seeds: one integer ``config.seed`` per run; independent streams are
  ``stream_key(seed, *labels)`` (PRNGKey folded with each label), never a carried key.
  Where a spread is claimed the run repeats over ``config.num_seeds`` seeds ``seed + i``.
* Distances between sample sets are sliced Wasserstein (``metrics.sliced_wasserstein``) against
  a fresh exact sample of the reference; the Monte Carlo floor is the same distance between two
  fresh exact samples of the same size, reported as mean and standard deviation over draws. A
  sample that is exactly from the reference has a distance distributed like the floor.
* Reports: ``table.md`` (markdown, numbers formatted here) and PNG figures (matplotlib Agg) in
  the workdir, plus ``config.json``. Every number in them comes from the run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.eval import metrics
from diffusion_lv.oracle import GaussianMixture, random_anisotropic, ring
from diffusion_lv.schedules import VEKarras

Array = jax.Array
CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
MIXTURES = ("ring", "anisotropic", "point")


# -- launching ---------------------------------------------------------------------------


def launch(run: Callable, module_file: str) -> None:
    """absl entry point: ``--workdir``, ``--config`` (ml_collections file), then ``run``."""
    from absl import app, flags
    from ml_collections import config_flags

    from diffusion_lv import console

    name = pathlib.Path(module_file).stem
    config_flags.DEFINE_config_file(
        "config", str(CONFIG_DIR / f"{name}.py"),
        "Config file; ':full' selects the full-size variant; override keys as --config.key=v.",
    )
    flags.DEFINE_string("workdir", os.path.join("runs", name), "Where table.md and figures go.")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        console.quiet(flags.FLAGS["verbosity"].present)
        run(flags.FLAGS.config, flags.FLAGS.workdir)
        # The table ends with the run's wall time: the one timing line.
        print((pathlib.Path(flags.FLAGS.workdir) / "table.md").read_text())

    app.run(main)


def prepare_workdir(workdir: str, config) -> pathlib.Path:
    """Create the workdir and record the config that produced it."""
    path = pathlib.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    return path


def check_choice(value, choices: Sequence, what: str) -> None:
    """Raise a clear ValueError when a config value is not one of its valid choices."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {list(choices)}")


# -- training through the library ------------------------------------------------------------


def final_only(library_config) -> None:
    """Set a library config (``configs/default.py`` keys) to do nothing periodic: one log line
    and one checkpoint at the end (the loop always saves one), no sample plots, no NLL."""
    library_config.training.log_every = library_config.training.num_steps
    library_config.training.checkpoint_every = 0
    library_config.training.keep_checkpoints = 1
    library_config.training.sample_every = 0
    library_config.eval.nll_examples = 0


@contextlib.contextmanager
def quiet_training_logs():
    """absl logging at WARNING inside (orbax logs every checkpoint save at INFO), restored
    after: the experiment's report is what it prints."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


def train_experiment(experiment, workdir: pathlib.Path):
    """Train a parsed library config (``experiment_lib.parse``) in ``workdir`` (resuming a
    checkpoint there); returns its evaluation (EMA) params and the seconds it took, compilation
    included."""
    from diffusion_lv import training

    start = time.perf_counter()
    result = training.train(
        str(workdir), experiment.network, experiment.parameterization, experiment.loss,
        experiment.optimizer, experiment.training, experiment.dataset_fn, experiment.data_shape,
        console=False,
        make_batches=experiment.make_batches,
    )
    params = jax.block_until_ready(experiment.eval_params(result.state))
    return params, time.perf_counter() - start


# -- seeds --------------------------------------------------------------------------------


def stream_key(seed: int, *labels: int) -> Array:
    """An independent PRNG stream: ``PRNGKey(seed)`` folded with each integer label."""
    key = jax.random.PRNGKey(seed)
    for label in labels:
        key = jax.random.fold_in(key, label)
    return key


# -- test distributions --------------------------------------------------------------------


def make_mixture(cfg) -> GaussianMixture:
    """A 2-D (or ``cfg.dim``-D) Gaussian mixture from a config section.

    ``name``: ``ring`` (``num_modes`` isotropic modes of std ``std`` on a circle of ``radius``),
    ``anisotropic`` (``random_anisotropic(mixture_seed, dim, num_modes)``) or ``point`` (one data
    point at ``location``: a delta, covariance exactly 0).
    """
    check_choice(cfg.name, MIXTURES, "mixture")
    if cfg.name == "ring":
        return ring(cfg.num_modes, cfg.radius, cfg.std)
    if cfg.name == "anisotropic":
        return random_anisotropic(cfg.mixture_seed, cfg.dim, cfg.num_modes)
    location = np.asarray(cfg.location, np.float64)[None]
    return GaussianMixture.isotropic(np.ones(1), location, 0.0)


# -- distances with floors -----------------------------------------------------------------


def sliced_wasserstein_to(samples: Array, reference: Callable[[Array, int], Array], key: Array,
                          num_projections: int) -> Array:
    """SWD between ``samples`` and a fresh exact sample ``reference(key, n)`` of the same size."""
    k_ref, k_proj = jax.random.split(key)
    exact = reference(k_ref, samples.shape[0]).astype(samples.dtype)
    return metrics.sliced_wasserstein(samples, exact, k_proj, num_projections)


def floor_draws(reference: Callable[[Array, int], Array], n: int, key: Array, num_draws: int,
                num_projections: int) -> np.ndarray:
    """``num_draws`` values of the SWD between two independent exact size-``n`` samples."""
    keys = jax.random.split(key, num_draws)
    one = lambda k: metrics.sliced_wasserstein_floor(reference, n, k, num_projections)
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def canonical_marginal(mixture: GaussianMixture, key: Array, n: int, sigma_ve) -> Array:
    """Exact samples of ``p`` at canonical noise level ``sigma_ve``: ``z = x0 + sigma_ve eps``."""
    return mixture.sample_marginal(key, n, sigma_ve, VEKarras())


@functools.partial(jax.jit, static_argnames=("num_projections",))
def swd_to_marginal(mixture: GaussianMixture, z: Array, keys: Array, sigma_ve,
                    num_projections: int) -> Array:
    """SWD of each sample set ``z[i]`` (canonical coordinates, shape (m, n, d)) to a fresh exact
    sample of ``p`` at ``sigma_ve`` (a scalar or one level per set); ``keys`` has shape (m, 2)."""
    sigma_ve = jnp.broadcast_to(jnp.asarray(sigma_ve, z.dtype), z.shape[:1])

    def one(zi, key, s):
        reference = lambda k, n: canonical_marginal(mixture, k, n, s)
        return sliced_wasserstein_to(zi, reference, key, num_projections)

    return jax.vmap(one)(z, keys, sigma_ve)


@functools.partial(jax.jit, static_argnames=("n", "num_draws", "num_projections"))
def marginal_floor(mixture: GaussianMixture, sigma_ve, n: int, key: Array, num_draws: int,
                   num_projections: int) -> Array:
    """Floor draws at each canonical level in ``sigma_ve`` (shape (L,)): shape (L, num_draws)."""

    def at_level(s, k):
        reference = lambda kk, m: canonical_marginal(mixture, kk, m, s)
        keys = jax.random.split(k, num_draws)
        return jax.vmap(
            lambda kk: metrics.sliced_wasserstein_floor(reference, n, kk, num_projections)
        )(keys)

    sigma_ve = jnp.atleast_1d(jnp.asarray(sigma_ve))
    return jax.vmap(at_level)(sigma_ve, jax.random.split(key, sigma_ve.shape[0]))


# -- numbers and reports ----------------------------------------------------------------


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, np.float64).ravel()
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), sd


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (scientific notation when small or large)."""
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_pm(mean: float, spread: float, digits: int = 3) -> str:
    """``mean ± spread``."""
    return f"{fmt(mean, digits)} ± {fmt(spread, 2)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; cells are converted with ``str`` and ``|`` inside them is escaped."""
    cells = lambda row: " | ".join(str(c).replace("|", "\\|") for c in row)
    lines = ["| " + cells(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + cells(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(workdir: pathlib.Path, title: str, sections: Sequence[str],
                 wall_seconds: float) -> str:
    """Write ``table.md``: a title, the sections (paragraphs/tables) and the run's wall time."""
    text = "\n\n".join([f"## {title}", *sections, f"Wall time: {wall_seconds:.0f} s."]) + "\n"
    (workdir / "table.md").write_text(text)
    return text


def write_json(workdir: pathlib.Path, results: dict) -> None:
    """``results.json``: the run's numbers, for scripts that compare runs."""
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, np.ndarray | jnp.ndarray):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, workdir: pathlib.Path, name: str) -> pathlib.Path:
    """Save ``fig`` as ``workdir/name`` (PNG) and close it."""
    path = workdir / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path
