"""``--mode=inpaint``: the masks, the digits scores and the mode end to end on a tiny trained run
(the conditional samplers themselves are checked against exact conditionals in
test_conditional.py)."""

import json
import os

import numpy as np
import pytest

from diffusion_lv import evaluate
from diffusion_lv import main as main_lib
from diffusion_lv.eval import inpaint
from tests.test_run_dir import cli, snapshot, tiny_config


def test_image_masks_cover_the_named_part():
    shape = (8, 8, 1)
    left = inpaint.unknown_mask("left_half", shape, 3)
    assert left.shape == (3, 8, 8, 1) and left[:, :, :4].all() and not left[:, :, 4:].any()
    top = inpaint.unknown_mask("top_half", shape, 1)[0, ..., 0]
    assert top[:4].all() and not top[4:].any()
    centre = inpaint.unknown_mask("centre", shape, 1)[0, ..., 0]
    assert centre[2:6, 2:6].all() and centre.sum() == 16
    # every channel of a pixel together; about half of the pixels, a new draw per example
    random = inpaint.unknown_mask("random_half", (8, 8, 3), 200, seed=1)
    assert (random == random[..., :1]).all()
    assert abs(random.mean() - 0.5) < 4 * np.sqrt(0.25 / (200 * 64))
    assert not (random[0] == random[1]).all()


def test_vector_masks_and_bad_names():
    assert inpaint.unknown_mask("left_half", (2,), 2).tolist() == [[True, False]] * 2
    assert inpaint.unknown_mask("right_half", (5,), 1).tolist() == [[False] * 2 + [True] * 3]
    assert inpaint.unknown_mask("left_half", (5,), 1).tolist() == [[True] * 3 + [False] * 2]
    with pytest.raises(ValueError, match="mask='centre'.*valid choices"):
        inpaint.unknown_mask("centre", (2,), 1)
    with pytest.raises(ValueError, match="mask='diagonal'.*valid choices"):
        inpaint.unknown_mask("diagonal", (8, 8, 1), 1)


def test_unknown_rmse_reads_only_the_unknown_part():
    originals = np.zeros((2, 4))
    completions = np.array([[3.0, 100.0, 3.0, 100.0], [3.0, 100.0, 3.0, 100.0]])
    unknown = np.array([[True, False, True, False]] * 2)
    assert inpaint.unknown_rmse(completions, originals, unknown) == pytest.approx(3.0)


def test_digits_scores_tell_originals_from_masked_inputs():
    from diffusion_lv.eval import digits_features

    images, labels = digits_features.scaled_split("test")
    images, labels = images[:150], labels[:150]
    originals = inpaint.digits_scores(images, labels)
    masked = np.where(inpaint.unknown_mask("left_half", (8, 8, 1), 150), 0.0, images)
    blanked = inpaint.digits_scores(masked, labels)
    # The classifier reads real test digits (a measured ~0.96) far better than half-blank ones.
    assert originals["accuracy"] > 0.9 and blanked["accuracy"] < originals["accuracy"] - 0.1
    assert blanked["frechet_distance"] > originals["frechet_distance"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    main_lib.run(tiny_config(**{"eval.nll_examples": 0, "eval.excess_examples": 0}), workdir,
                 "train")
    return workdir


def test_inpaint_mode_completes_held_out_points(trained):
    before = snapshot(trained)
    proc, _ = cli(f"--workdir={trained}", "--mode=inpaint", "--config.inpaint.num_examples=128",
                  "--config.inpaint.nfe=24", "--config.inpaint.langevin_steps=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # training's record is untouched; the completions have a folder of their own
    after = snapshot(trained)
    kept = [k for k in before if k != "log.txt" and not k.startswith("metrics_history")
            and "tfevents" not in k]
    assert kept and all(after[k] == before[k] for k in kept)
    folder = os.path.join(trained, "inpaint",
                          "step_0000004-left_half-langevin-nfe24-ema_0.995")
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    assert metrics["mask"] == "left_half" and metrics["method"] == "langevin"
    assert metrics["examples"] == 128 and 0 < metrics["nfe"] <= 24
    assert metrics["options"]["langevin_steps"] == 1 and metrics["unknown_fraction"] == 0.5
    assert metrics["swd_ratio"] > 0 and metrics["unknown_rmse"] > 0
    assert os.path.isfile(os.path.join(folder, "samples.png"))
    completions = np.load(os.path.join(folder, "completions.npy"))
    assert completions.shape == (128, 2) and np.isfinite(completions).all()
    assert "inpainted 128 examples of ring8 (left_half unknown" in proc.stdout, proc.stdout
    # one line of the history per evaluation, the inpainting's included
    history = [json.loads(line) for line in open(os.path.join(trained, "metrics_history.jsonl"))]
    assert history[-1]["folder"].startswith("inpaint") and history[-1]["mask"] == "left_half"


def test_inpainting_keeps_the_known_values(trained):
    """The completed points carry the held-out examples' known coordinates exactly, and the
    unknown ones are the sampler's (not the originals)."""
    config = main_lib.run_dir.eval_config(trained, tiny_config(), False, {
        "inpaint.num_examples": 64, "inpaint.nfe": 12, "inpaint.method": "replacement"})
    experiment = main_lib.experiment_lib.parse(config)
    state = evaluate.restore_checkpoint(experiment, trained)
    metrics, folder = evaluate.write_inpainting(experiment, state, trained)
    completions = np.load(os.path.join(folder, "completions.npy"))
    originals, _, _ = evaluate._inpaint_examples(experiment, 64)  # noqa: SLF001
    np.testing.assert_array_equal(completions[:, 1], originals[:, 1])
    assert np.all(completions[:, 0] != originals[:, 0])
    assert metrics["method"] == "replacement" and folder.endswith("replacement-nfe12-ema_0.995")


def test_the_particle_filter_completes_each_example_with_its_group(trained):
    """``method=smc``: ``particles`` completions per example, each group carrying its own
    example's known coordinates; the picture and metrics count examples, not rows."""
    config = main_lib.run_dir.eval_config(trained, tiny_config(), False, {
        "inpaint.num_examples": 16, "inpaint.nfe": 12, "inpaint.method": "smc",
        "inpaint.particles": 4, "inpaint.langevin_steps": 1})
    experiment = main_lib.experiment_lib.parse(config)
    state = evaluate.restore_checkpoint(experiment, trained)
    metrics, folder = evaluate.write_inpainting(experiment, state, trained)
    completions = np.load(os.path.join(folder, "completions.npy"))
    originals, _, _ = evaluate._inpaint_examples(experiment, 16)  # noqa: SLF001
    assert completions.shape == (64, 2) and np.isfinite(completions).all()
    np.testing.assert_array_equal(completions[:, 1], np.repeat(originals[:, 1], 4))
    assert len(np.unique(completions[:, 0])) > 16  # the rows of a group are distinct draws
    assert metrics["examples"] == 16 and metrics["completions_per_example"] == 4
    assert metrics["nfe"] <= 12 and metrics["options"]["particles"] == 4
    line = evaluate.inpaint_summary(metrics)
    assert "16 examples of ring8, 4 completions each (scored together), (left_half" in line


def test_inpaint_refuses_bad_settings_before_running(trained):
    before = snapshot(trained)
    proc, _ = cli(f"--workdir={trained}", "--mode=inpaint", "--config.inpaint.mask=centre")
    assert proc.returncode == 2
    assert "config.inpaint.mask='centre'" in proc.stderr and "left_half" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(trained) == before
