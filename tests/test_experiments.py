"""The paper-claim experiments at a tiny size: each runs in-process through its ``run`` function,
writes its files, and the relation it claims holds at that size.

Tolerances: distances are compared with the Monte Carlo floor measured in the same run (mean
``m`` and sd ``s`` of the SWD between two exact samples): a mean over ``k`` seeds of a distance
that is distributed like the floor exceeds ``m + 3 s`` with probability well below 1e-3 for
``k >= 2``. Convergence orders are leading-order exponents (1.5 for the split, 1 for the control).
Monte Carlo identities use z-scores against their own standard errors (|z| < 4.5).
"""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import config_dict

from experiments import common, curvature, dsm_sm_kl, duality, langevin_identity, split
from experiments.configs import curvature as curvature_config
from experiments.configs import dsm_sm_kl as dsm_sm_kl_config
from experiments.configs import duality as duality_config
from experiments.configs import langevin_identity as langevin_identity_config
from experiments.configs import split as split_config

Z_MAX = 4.5


def floor_bound(floor) -> float:
    mean, sd = floor
    return mean + 3.0 * sd


def small_sampling(config):
    """The sizes the sampling experiments share at test size: 2 seeds of 512 samples, SWD with
    64 projections against a floor of 10 draws."""
    config.num_seeds = 2
    config.num_samples = 512
    config.num_projections = 64
    config.floor_draws = 10
    return config


def check_files(workdir, figure: str) -> str:
    for name in ("table.md", "config.json", "results.json", figure):
        assert (workdir / name).is_file(), name
    assert (workdir / figure).stat().st_size > 10_000  # a real image, not an empty canvas
    text = (workdir / "table.md").read_text()
    assert text.startswith("## Experiment") and "|---" in text
    return text


# -- 1: Langevin is the identity ---------------------------------------------------------


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory):
    config = small_sampling(langevin_identity_config.get_config())
    config.starts = ("data", "one_mode")
    config.step_sizes = (0.02,)
    config.langevin_time = 30.0
    config.num_checkpoints = 6
    workdir = tmp_path_factory.mktemp("langevin_identity")
    return workdir, langevin_identity.run(config, str(workdir))


def test_langevin_identity_keeps_p_and_forgets_the_start(identity_run):
    workdir, results = identity_run
    text = check_files(workdir, "langevin_identity.png")
    assert "Monte Carlo floor" in text
    bound = floor_bound(results["floor"])
    data = results["distances"]["0.02"]["data"]
    one_mode = results["distances"]["0.02"]["one_mode"]
    # From p: at the floor at every checkpoint (the mean over seeds).
    assert np.all(data.mean(axis=0) < bound), (data.mean(axis=0), bound)
    # From one mode: far at first, at the floor at the end.
    assert one_mode[:, 0].min() > 5 * results["floor"][0]
    assert one_mode[:, -1].mean() < bound
    # The samples themselves are new: E|x_tau - x_0|^2 near 2 tr Cov (independent draws).
    assert results["decorrelation"]["0.02"][0] > 0.8


# -- 2: forward + reverse = Langevin --------------------------------------------------------


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    config = small_sampling(split_config.get_config())
    config.schedules = ("vp",)
    config.rates = (1.0, 2.0)
    config.num_steps = 100
    config.algebra_levels = 3
    config.algebra_samples = 256
    workdir = tmp_path_factory.mktemp("split")
    return workdir, split.run(config, str(workdir))


def test_split_keeps_p_t(split_run):
    workdir, results = split_run
    check_files(workdir, "split.png")
    bound = floor_bound(results["floor"])
    assert len(results["rows"]) == 2
    for row in results["rows"]:
        assert row["split"].mean() < bound, row
        assert row["langevin"].mean() < bound, row


def test_split_one_step_algebra_orders(split_run):
    _, results = split_run
    for case in results["algebra"]:
        expected = 1.0 if case["control"] else 1.5
        assert abs(case["slope"] - expected) < 0.1, case
        # The relative difference shrinks with the step (a consistent split) unless control.
        rel = case["rms_difference"] / case["rms_step"]
        assert rel[-1] < rel[0]


def test_experiment_rejects_bad_choices(tmp_path):
    config = split_config.get_config()
    config.schedules = ("vp", "karras")
    with pytest.raises(ValueError, match="unknown schedule 'karras'; valid choices"):
        split.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="unknown config size"):
        split_config.get_config("huge")
    with pytest.raises(ValueError, match="unknown mixture 'moons'; valid choices"):
        common.make_mixture(config_dict.ConfigDict({"name": "moons"}))


# -- 3: duality -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duality_run(tmp_path_factory):
    config = small_sampling(duality_config.get_config())
    config.schedules = ("vp",)
    config.levels = (1.5, 0.4, 0.05)
    config.num_steps = 200
    workdir = tmp_path_factory.mktemp("duality")
    return workdir, duality.run(config, str(workdir))


def test_duality_reverse_marginals_are_forward_marginals(duality_run):
    workdir, results = duality_run
    check_files(workdir, "duality.png")
    floor = results["floor"]
    bounds = floor.mean(axis=1) + 3 * floor.std(axis=1, ddof=1)
    runs = {(r["c"], r["start"]): r["swd"] for r in results["runs"]}
    assert set(runs) == {(1.0, "exact"), (2.0, "exact"), (1.0, "prior"), (2.0, "prior")}
    for c in (1.0, 2.0):
        assert np.all(runs[(c, "exact")].mean(axis=0) < bounds), (c, runs[(c, "exact")], bounds)
        # The Gaussian prior is not p_T at this small T: the control start is off the floor.
        assert runs[(c, "prior")][:, 0].mean() > bounds[0]


# -- 4: curvature -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def curvature_run(tmp_path_factory):
    config = curvature_config.get_config()
    config.num_trajectories = 16
    config.num_plotted = 4
    config.dense_levels = 120
    config.rtol = config.atol = 1e-8
    config.grids = ("karras",)
    config.euler_steps = (1, 4, 16)
    workdir = tmp_path_factory.mktemp("curvature")
    return workdir, curvature.run(config, str(workdir))


def test_curvature_straight_paths_and_euler(curvature_run):
    workdir, results = curvature_run
    check_files(workdir, "curvature.png")
    assert results["reference"]["point"]["max_error_vs_closed_form"] < 1e-5
    bend = {(c["case"], c["schedule"]): c for c in results["curvature"]}
    errors = {(e["case"], e["schedule"]): np.asarray(e["rms_error"]) for e in results["euler"]}
    for name in ("ve", "rf"):  # one data point: straight, constant speed, Euler exact
        assert abs(bend[("point", name)]["one_minus_chord_over_length"][0]) < 1e-10
        assert bend[("point", name)]["max_deviation_over_chord"][0] < 1e-10
        assert errors[("point", name)].max() < 1e-10
    # VP bends, and Euler in VP coordinates converges at first order on the same grid.
    assert bend[("point", "vp")]["one_minus_chord_over_length"][0] > 0.01
    vp = errors[("point", "vp")]
    assert vp[-1] > 1e-4 and vp[-1] < vp[1] < vp[0]
    # On any data, Euler in VE and in RF coordinates is the same map on the same grid.
    ve, rf = errors[("mixture", "ve")], errors[("mixture", "rf")]
    np.testing.assert_allclose(rf, ve, rtol=1e-9)
    assert bend[("mixture", "rf")]["one_minus_chord_over_length"][0] > 0.01


# -- 7: DSM = SM + C, KL decay ------------------------------------------------------------


@pytest.fixture(scope="module")
def dsm_run(tmp_path_factory):
    config = dsm_sm_kl_config.get_config()
    config.levels = (0.3, 1.0)
    config.dsm_samples = 16384
    config.kl_schedules = ("vp", "rf")
    config.kl_samples = 4096
    workdir = tmp_path_factory.mktemp("dsm_sm_kl")
    return workdir, dsm_sm_kl.run(config, str(workdir))


def test_dsm_minus_sm_is_model_independent(dsm_run):
    workdir, results = dsm_run
    check_files(workdir, "dsm_sm_kl.png")
    rows = results["dsm_sm"]
    assert len(rows) == 2 * len(dsm_sm_kl.MODELS)
    for r in rows:
        assert abs(r["z"]) < Z_MAX, r
        if r["model"] == "exact":
            assert r["sm"][0] == 0.0
    # Power: at each level the models' SM losses differ by far more than the resolution of
    # the test, so a model-dependent DSM - SM of even a tenth of that size would be seen.
    for level in (0.3, 1.0):
        at = [r for r in rows if r["sigma_ve"] == level]
        assert max(r["sm"][0] for r in at) > 10 * Z_MAX * max(r["versus_exact"][1] for r in at)


def test_kl_decay_matches_eq_17(dsm_run):
    _, results = dsm_run
    for r in results["kl"]:
        assert abs(r["z"]) < Z_MAX, r
        assert r["fd"][0] < 0  # KL contracts along the forward process
        assert abs(r["fd_bias_probe"]) < 0.1 * r["difference"][1]  # FD bias << Monte Carlo
    for name in ("vp", "rf"):
        kl = [r["kl"][0] for r in results["kl"] if r["schedule"] == name]
        assert kl[0] > kl[1]
