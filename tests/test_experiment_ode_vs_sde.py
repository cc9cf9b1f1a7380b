"""Experiment 5 (ODE versus SDE with an imperfect score) at its "test" size, in-process.

The run trains two ring8 models (seeds 0, 1; 1000 updates: an imperfect score) and samples them
and the exact score with Euler at c = 1 and c = 2, NFE 10 and 100, 4096 samples (fewer would
miss the ODE's rare far samples, about 0.1 %, that carry its error).

Tolerances: a mean over k = 2 seeds of a distance distributed like the SWD floor (mean m, sd s)
exceeds m + 3 s with probability well below 1e-3. With the exact score the excess cross-entropy
is a discretisation error (first order for Euler: measured 2-7 nats at NFE 10 and below 0.1 at
NFE 100) plus Monte Carlo noise of sd(-log p_0)/sqrt(n) = 0.016 nats; the test asserts that it
falls by more than a factor 5 from NFE 10 to NFE 100. With the trained score the ODE carries the
score error (SWD measured at about 10x the floor), which the reverse SDE contracts (about 2x); the
test asserts only the ordering of the means at NFE 100, with a margin of 1.5x.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import ode_vs_sde
from experiments.configs import ode_vs_sde as ode_vs_sde_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = ode_vs_sde_config.get_config("test")
    workdir = tmp_path_factory.mktemp("ode_vs_sde")
    return config, workdir, ode_vs_sde.run(config, str(workdir))


def rows_by_key(results):
    return {(r["score"], r["c"]): r for r in results["rows"]}


def test_writes_the_report_with_every_row(run):
    config, workdir, results = run
    for name in ("table.md", "config.json", "results.json", "ode_vs_sde.png"):
        assert (workdir / name).is_file(), name
    assert (workdir / "ode_vs_sde.png").stat().st_size > 10_000
    text = (workdir / "table.md").read_text()
    assert text.startswith("## Experiment 5") and "|---" in text and "Verdict" in text
    rows = rows_by_key(results)
    assert set(rows) == {(s, c) for s in ("trained 1000", "exact") for c in (1.0, 2.0)}
    for row in rows.values():
        assert row["nfe"] == list(config.nfes)
        assert row["swd"].shape == row["cross_entropy"].shape == (2, config.num_seeds)
        assert np.all(np.isfinite(row["swd"])) and np.all(np.isfinite(row["cross_entropy"]))
        # One markdown line per (score, sampler) in each table: SWD, cross-entropy, tail.
        assert text.count(f"| {row['score']} | {row['sampler']} |") == 3
    # Per score: c=2 vs the ODE and the best at the smallest NFE; the exact score's floor line.
    assert len(results["verdicts"]) == 2 * 2 + 1


def test_exact_score_converges_to_the_floor(run):
    _, _, results = run
    floor_mean, floor_sd = results["floor"]
    for (score, c), row in rows_by_key(results).items():
        if score != "exact":
            continue
        assert row["swd"][-1].mean() < floor_mean + 3 * floor_sd, (c, row["swd"])
        coarse, fine = row["cross_entropy"].mean(axis=1)
        assert fine < coarse / 5, (c, coarse, fine)
        assert abs(fine) < 0.5, (c, fine)


def test_sde_contracts_the_trained_score_error(run):
    _, _, results = run
    rows = rows_by_key(results)
    ode, sde = rows[("trained 1000", 1.0)]["swd"][-1], rows[("trained 1000", 2.0)]["swd"][-1]
    exact = rows[("exact", 1.0)]["swd"][-1]
    assert ode.mean() > 1.5 * sde.mean(), (ode, sde)
    # The trained score is imperfect: its ODE is visibly worse than the exact score's.
    assert ode.mean() > 2 * exact.mean(), (ode, exact)


def checkpoint_files(model_dir):
    """Every checkpoint file with its modification time: a retrained model (its directory
    removed, trained again) writes new ones; a restored one writes none (saving the step that
    is already saved is a no-op)."""
    return {p: p.stat().st_mtime_ns for p in (model_dir / "checkpoints").rglob("*")
            if p.is_file()}


def test_training_is_deterministic_and_reused(run, tmp_path):
    config, workdir, _ = run
    steps = config.train_steps[0]
    model_dir = workdir / "models" / f"steps_{steps}" / f"seed_{config.seed}"
    before = checkpoint_files(model_dir)
    assert before
    _, reused, _ = ode_vs_sde.train_models(config, workdir, [config.seed], steps)
    assert checkpoint_files(model_dir) == before  # restored, not retrained
    _, fresh, _ = ode_vs_sde.train_models(config, tmp_path, [config.seed], steps)
    for a, b in zip(jax.tree.leaves(reused), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_choices_are_named(tmp_path):
    config = ode_vs_sde_config.get_config("test")
    config.rates = (1.0, 0.5)
    with pytest.raises(ValueError, match=r"rates must be >= 1 .* got c=0.5"):
        ode_vs_sde.run(config, str(tmp_path))
    config.rates = (2.0,)
    with pytest.raises(ValueError, match="must include 1"):
        ode_vs_sde.run(config, str(tmp_path))
    config = ode_vs_sde_config.get_config("test")
    config.model_config = "checkerboard_rf"
    with pytest.raises(ValueError, match=r"unknown model_config 'checkerboard_rf'; valid "
                                         r"choices: \['ring8_rf', 'ring8_ve_karras'"):
        ode_vs_sde.run(config, str(tmp_path))
    config = ode_vs_sde_config.get_config("test")
    config.nfes = (1, 10)  # the final denoise leaves no evaluation for a step
    with pytest.raises(ValueError, match="nfe=1 buys no step of sampler 'euler'"):
        ode_vs_sde.run(config, str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown config size 'huge'; valid choices: "
                                         r"\['default', 'full', 'test'\]"):
        ode_vs_sde_config.get_config("huge")
    assert not (tmp_path / "models").exists()  # nothing trained before the checks
