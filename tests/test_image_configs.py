"""Image configs: every recipe parses and builds its full network (shapes only), trains one step
on (mock) data with a shrunken network, and the digits config runs end to end through main:
training, samples grid, denoising strip, Frechet distance. Image grids are checked pixel by pixel.
"""

import glob
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_lv import evaluate, main, training
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.config_files import load_config
from diffusion_lv.eval import image_grid
from diffusion_lv.models import unet
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for d in ("digits", "cifar10", "mnist")
    for p in glob.glob(os.path.join(ROOT, "configs", d, "*.py"))
    if not p.endswith(("common.py", "__init__.py"))
)
# Published parameter counts of the anchors' networks (see unet.py and the config docstrings).
FULL_SIZE = {
    "configs/cifar10/edm_ve.py": 55_732_739,  # EDM's 55,733,891 less its augmentation mapping
    "configs/cifar10/ddpmpp_vp_ml.py": 61_804_419,  # score_sde's DDPM++ cont., 4 blocks
    "configs/cifar10/rf.py": 61_804_419,
}
# The smallest network of the same kind: one level, one block, no attention.
TINY = {"channels": 8, "channel_mult": (1,), "num_blocks": 1, "attn_resolutions": ()}


def load(path):
    return load_config(os.path.join(ROOT, path))


def test_configs_are_found():
    assert len(CONFIGS) == 9 and set(FULL_SIZE) <= set(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_parses_and_builds_the_full_network(path, capsys):
    experiment = experiment_lib.parse(load(path), num_devices=1)
    assert experiment.image_data is not None
    assert experiment.data_shape == experiment.image_data.info.image_shape
    counts = unet.param_counts(experiment.network, experiment.data_shape)  # jax.eval_shape
    if path in FULL_SIZE:
        assert counts["total"] == FULL_SIZE[path]
        print(unet.describe(experiment.network, experiment.data_shape))
        assert f"{FULL_SIZE[path]:,} parameters" in capsys.readouterr().out


def test_config_errors_name_the_key():
    config = load("configs/digits/ve_karras.py")
    config.model.channels = 0
    with pytest.raises(experiment_lib.ConfigError, match=r"config.model.channels=0"):
        experiment_lib.parse(config, num_devices=1)
    config = load("configs/digits/ve_karras.py")
    config.model.name = "mlp"
    with pytest.raises(experiment_lib.ConfigError, match="cannot model images.*'unet'"):
        experiment_lib.parse(config, num_devices=1)
    config = load("configs/digits/ve_karras.py")
    config.data.flip = True
    with pytest.raises(experiment_lib.ConfigError, match=r"unknown image data option.*flip"):
        experiment_lib.parse(config, num_devices=1)


def _shrunk(path, **training_overrides):
    config = load(path)
    config.model.update(TINY)
    config.training.batch_size = 4
    config.training.num_steps = 1
    config.training.steps_per_call = 1
    config.training.unroll_steps = True
    config.training.sample_every = 0
    config.training.checkpoint_every = 0
    config.training.update(training_overrides)
    config.optimizer.warmup_steps = 0  # a warm-up starts at learning rate 0: no first update
    return config


# Two configs with distinct code paths run in the fast suite (EDM preconditioning on 32x32x3
# mock CIFAR-10; linear VP with ML weighting, importance sampling and dequantisation on mock
# MNIST); the digits VE-Karras row runs end to end below. The others need --runslow.
FAST_STEP = ("configs/cifar10/edm_ve.py", "configs/mnist/ddpmpp_vp_ml.py")


@pytest.mark.parametrize(
    "path", [p if p in FAST_STEP else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS]
)
def test_one_training_step_on_mock_data(path):
    experiment = experiment_lib.parse(_shrunk(path), num_devices=1)
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    mesh = step_lib.make_mesh()
    state = state_lib.create_train_state(
        experiment.network, optimizer, 0, experiment.data_shape, 1
    )
    before = jax.device_get(state.params)  # the step donates the state's buffers
    step = step_lib.make_train_step(
        experiment.network.apply, experiment.parameterization, experiment.loss, optimizer,
        experiment.training.ema_decays, mesh, unroll=True,
    )
    with tfds.testing.mock_data(num_examples=16):
        batches = experiment.image_data.step_batches(mesh, 4, seed=0)
        try:
            block = batches(0, 1)
        finally:
            batches.close()
    assert block.shape == (1, 4, *experiment.data_shape)
    state, metrics = step(jax.device_put(state, step_lib.replicated(mesh)), block)
    assert int(state.step) == 1 and bool(metrics["finite"][0])
    change = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.params, before)
    assert max(jax.tree.leaves(change)) > 0  # the update moved the params


def test_digits_end_to_end_through_main(tmp_path):
    config = _shrunk("configs/digits/ve_karras.py", num_steps=3, sample_every=2)
    config.optimizer.decay = "constant"  # a cosine decay's length follows num_steps
    config.sampler.nfe = 3
    config.eval.num_samples = 20
    workdir = str(tmp_path)
    metrics = main.run(config, workdir, "train")
    for name in ("samples.png", "denoising.png", "samples.npy", "metrics.json",
                 "samples/step_0000002.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f) == pytest.approx(metrics)
    assert metrics["step"] == 3 and metrics["num_samples"] == 20
    # An almost untrained model: far from the data, and the metric says so.
    assert metrics["frechet_digits"] > 3 * metrics["frechet_digits_floor"] > 0
    assert not metrics["within_3x_floor"]
    # Resume: a second run continues from the checkpoint, then evaluates again; it ends with
    # exactly the params of a run that trained 4 steps without stopping (the batches are a
    # function of the step).
    config.training.num_steps = 4
    assert main.run(config, workdir, "train")["step"] == 4
    experiment = experiment_lib.parse(config, num_devices=1)
    resumed = evaluate.restore_checkpoint(experiment, workdir)
    straight = training.train(
        str(tmp_path / "straight"), experiment.network, experiment.parameterization,
        experiment.loss, experiment.optimizer, experiment.training, experiment.dataset_fn,
        experiment.data_shape, console=False, make_batches=experiment.image_data.step_batches,
    ).state
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), resumed.params, straight.params)
    assert all(jax.tree.leaves(same))
    # Held-out NLL: the whole test split (297 < 400 asked for), dequantised to 17 levels. The
    # dequantised figure bounds the model's discrete NLL, which is >= 0, in expectation.
    config.eval.nll_examples, config.eval.nll_batch_size = 400, 150
    config.eval.nll_rtol = config.eval.nll_atol = 1e-3
    metrics = main.run(config, workdir, "eval")
    assert metrics["nll_examples"] == 297 and metrics["nll_data"] == "digits/test"
    assert metrics["nll_dequantized_levels"] == 17
    assert metrics["nll_divergence"] == "hutchinson (1 probe)"
    assert metrics["nll_bpd"] > 0 and metrics["nll_bpd_standard_error"] > 0


# -- pictures -----------------------------------------------------------------------------------


def test_image_grid_places_tiles_and_scales_pixels():
    tiles = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid.image_grid(tiles, num_cols=2, padding=1, scale=2, pad_value=7)
    # 2 rows x 2 cols of 4x6 tiles with 1-pixel borders: (2*(4+1)+1, 2*(6+1)+1).
    assert grid.shape == (11, 15, 1) and grid.dtype == np.uint8
    assert np.all(grid[1:5, 1:7] == 0) and np.all(grid[1:5, 8:14] == 128)
    assert np.all(grid[6:10, 1:7] == 255)
    assert np.all(grid[6:10, 8:14] == 7)  # the empty fourth slot stays padding
    assert np.all(grid[0] == 7) and np.all(grid[:, 0] == 7)
    with pytest.raises(ValueError, match="C in"):
        image_grid.image_grid(np.zeros((2, 4, 4, 2)))


def test_png_round_trip(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 3))
    path = image_grid.save_image_grid(rgb, str(tmp_path / "grid.png"), num_cols=5, scale=1)
    read = np.asarray(Image.open(path))
    np.testing.assert_array_equal(read, image_grid.image_grid(rgb, 5))


def test_denoising_strip_with_the_exact_denoiser():
    # A mixture of three digit images (tiny spread): its exact denoiser recovers the image at
    # small noise and returns (close to) the mixture mean at large noise.
    from diffusion_lv.eval.digits_features import scaled_split
    from diffusion_lv.oracle import GaussianMixture

    images_, _ = scaled_split("test")
    means = images_[:3].reshape(3, -1)
    mixture = GaussianMixture.isotropic(np.ones(3) / 3, means, 0.01)

    def ve_denoiser(z, sigma):
        return mixture.denoise_ve(z.reshape(len(z), -1), sigma).reshape(z.shape)

    sigmas = (0.05, 1000.0)
    strip = image_grid.denoising_strip(ve_denoiser, images_[0], sigmas, jax.random.PRNGKey(0))
    assert strip.shape == (4, 8, 8, 1)
    noisy, denoised = strip[:2], strip[2:]
    # Small noise: the posterior is the image's own component; D = its mean within 0.01 * 3.
    np.testing.assert_allclose(denoised[0], images_[0], atol=0.01)
    # Huge noise: posterior weights move from 1/3 by O(|mu|^2 / sigma) -> D = mixture mean.
    np.testing.assert_allclose(denoised[1].ravel(), means.mean(0), atol=0.05)
    # The noisy row is the VP-scaled state: at sigma 1000 it is almost pure unit noise (the
    # std of 64 normals is 1 +- 0.09: within 5 sd).
    assert 0.56 < float(np.std(noisy[1])) < 1.44
