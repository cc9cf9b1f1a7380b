"""The image data pipeline: digits, TFDS (mock and a real array_record builder), determinism,
resume, per-process sharding, scaling, flips, device placement. Nothing here reaches the network.
"""

import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_lv.data import device, digits, images
from diffusion_lv.eval.digits_features import frechet_distance


def _digits(batch_size=32, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return images.image_dataset("digits", batch_size, **kw)


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


# -- sources -----------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_complete():
    train, test = digits.DigitsSource("train"), digits.DigitsSource("test")
    assert (len(train), len(test)) == (1500, 297)
    record = train[0]
    assert record["image"].shape == (8, 8, 1) and record["image"].dtype == np.uint8
    assert record["image"].max() <= 16
    # Together the two splits are exactly the 1797 images of scikit-learn, each once.
    from sklearn.datasets import load_digits

    every = np.concatenate([train.images, test.images]).reshape(1797, -1)
    reference = load_digits().images.astype(np.uint8).reshape(1797, -1)
    key = lambda a: sorted(map(bytes, a))
    assert key(every) == key(reference)
    # The split does not depend on anything run-specific: a fresh read gives the same arrays.
    digits._split_arrays.cache_clear()
    assert np.array_equal(digits.DigitsSource("train").images, train.images)


def test_unknown_names_are_rejected_with_choices():
    with pytest.raises(ValueError, match="unknown image dataset 'cifar100'.*valid choices"):
        images.image_dataset("cifar100", 8)
    with pytest.raises(ValueError, match="unknown split 'valid'.*'train', 'test'"):
        images.open_source("digits", "valid")
    with pytest.raises(ValueError, match="multiple of the process count 2"):
        _digits(batch_size=5, process_count=2)


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(images.DatasetNotPreparedError, match="tfds build cifar10"):
        images.image_dataset("cifar10", 8, data_dir=str(tmp_path), process_count=1,
                             process_index=0)
    assert time.perf_counter() - start < 10.0  # a download attempt retries for minutes


@pytest.mark.parametrize(
    "name, shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                    ("cifar10", (32, 32, 3)), ("celeb_a", (64, 64, 3))]
)
def test_tfds_datasets_under_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=12):
        ds = images.image_dataset(name, 4, random_flip=True, process_index=0, process_count=1)
        batch = ds[0]
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    if name == "celeb_a":
        assert np.all(batch["label"] == 0)  # unlabelled


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """A real array_record TFDS data set (Tensor features need no TensorFlow to prepare)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 25)}

    def _generate_examples(self, lo, hi):
        for i in range(lo, hi):
            yield i, {"image": np.full((8, 8, 1), i % 17, np.uint8), "label": i % 10}


def test_prepared_array_record_dataset_reads_without_tensorflow(tmp_path):
    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = images.tfds_source("tiny_images", "train", data_dir=str(tmp_path))
    assert len(source) == 20
    assert len(images.tfds_source("tiny_images", "train[:50%]", data_dir=str(tmp_path))) == 10
    ds = _digits(batch_size=20, source=source, shuffle=False, num_epochs=1)
    batch = ds[0]
    # Each constant image i % 17 scales to 2 (i % 17) / 16 - 1; labels come along.
    values = batch["image"][:, 0, 0, 0]
    assert sorted(np.rint((values + 1) * 8).astype(int)) == sorted(i % 17 for i in range(20))
    assert sorted(batch["label"]) == sorted(i % 10 for i in range(20))


# -- pixels ------------------------------------------------------------------------------------


def test_scaling_maps_levels_to_the_closed_interval_and_back():
    for levels in (17, 256):
        pixels = np.arange(levels, dtype=np.uint8)
        scaled = images.scale_pixels(pixels, levels)
        assert scaled[0] == -1.0 and scaled[-1] == 1.0
        # Exact up to float32 rounding of the product (<= 1.2e-7) and the shift (<= 6e-8).
        exact = 2.0 * np.arange(levels) / (levels - 1) - 1.0
        np.testing.assert_allclose(scaled, exact, rtol=0, atol=1.8e-7)
        np.testing.assert_array_equal(images.unscale_pixels(scaled, levels), pixels)


def test_dequantisation_stays_in_its_pixel_bin():
    levels = 17
    pixels = np.arange(levels, dtype=np.uint8).repeat(50)
    noise = np.random.default_rng(0).random(pixels.shape, dtype=np.float32)
    x = images.scale_pixels(pixels, levels, noise)
    assert -1.0 <= x.min() and x.max() < 1.0
    # Bin p is [2p/L - 1, 2(p+1)/L - 1): the integer pixel is recovered exactly.
    np.testing.assert_array_equal(np.floor((x + 1.0) * levels / 2.0).astype(int), pixels)


def test_flips_mirror_whole_images_and_are_redrawn_each_epoch():
    source = digits.DigitsSource("train")
    ds = _digits(batch_size=100, random_flip=True, seed=3)
    flips = []
    for epoch in range(2):  # 1500 / 100 = 15 batches per epoch
        decisions = {}
        for n in range(15 * epoch, 15 * (epoch + 1)):
            batch = ds[n]
            plain = images.scale_pixels(source.images[batch["index"]], digits.NUM_LEVELS)
            mirrored = plain[:, :, ::-1]
            is_plain = np.all(batch["image"] == plain, axis=(1, 2, 3))
            is_mirror = np.all(batch["image"] == mirrored, axis=(1, 2, 3))
            assert np.all(is_plain | is_mirror)  # whole images, never partial
            asymmetric = ~np.all(plain == mirrored, axis=(1, 2, 3))
            decisions.update(zip(batch["index"][asymmetric], is_mirror[asymmetric], strict=True))
        flips.append(decisions)
    common = sorted(flips[0].keys() & flips[1].keys())
    n = len(common)
    assert n > 1400
    # Fair coins, independent between epochs: both fractions are 1/2 +- 5 sigma (sigma ~ 0.013).
    tolerance = 5 * 0.5 / np.sqrt(n)
    first = np.array([flips[0][i] for i in common])
    second = np.array([flips[1][i] for i in common])
    assert abs(first.mean() - 0.5) < tolerance
    assert abs(np.mean(first != second) - 0.5) < tolerance


# -- order, resume, sharding -------------------------------------------------------------------


def test_batches_are_a_function_of_seed_and_position():
    a, b, c = _digits(seed=1, dequantize=True), _digits(seed=1, dequantize=True), _digits(seed=2)
    assert _same(a[7], b[7])
    assert not np.array_equal(a[7]["index"], c[7]["index"])
    # An epoch is a permutation of the split; the next epoch is a different permutation.
    ds = _digits(batch_size=100, shuffle=True, seed=1)
    epoch0 = np.concatenate([ds[n]["index"] for n in range(15)])
    epoch1 = np.concatenate([ds[n]["index"] for n in range(15, 30)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(1500))
    assert not np.array_equal(epoch0, epoch1)


def test_iterator_state_resumes_exactly():
    ds = _digits(batch_size=16, seed=5, random_flip=True, dequantize=True)
    first = images.make_loader(ds, num_threads=2, prefetch=4)
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(4)]
    resumed = images.make_loader(_digits(batch_size=16, seed=5, random_flip=True,
                                         dequantize=True))
    resumed.set_state(state)
    for want in expected:
        assert _same(next(resumed), want)
    assert _same(expected[0], ds[3])  # the iterator and random access agree


def test_device_prefetcher_state_excludes_read_ahead():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    ds = _digits(batch_size=8, seed=0)
    prefetcher = device.DevicePrefetcher(images.make_loader(ds, num_threads=1), mesh, size=3)
    next(prefetcher)
    state = prefetcher.get_state()  # three more batches are already on the device
    nxt = next(prefetcher)
    np.testing.assert_array_equal(np.asarray(nxt["image"]), ds[1]["image"])
    assert "index" not in nxt  # host-only field
    prefetcher.set_state(state)
    np.testing.assert_array_equal(np.asarray(next(prefetcher)["label"]), ds[1]["label"])


def test_step_batches_serve_blocks_by_update_number():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    ds = _digits(batch_size=8, seed=0)
    batches = device.StepBatches(ds, mesh, with_labels=True)
    try:
        block = batches(0, 3)  # updates 1, 2, 3
        ahead = batches(3, 3)  # served from the read-ahead
        fresh = batches.read_block(3, 3)
    finally:
        batches.close()
    assert block["image"].shape == (3, 8, 8, 8, 1)
    assert block["image"].sharding.spec == jax.sharding.PartitionSpec(None, "data")
    np.testing.assert_array_equal(np.asarray(block["image"][2]), ds[2]["image"])
    np.testing.assert_array_equal(np.asarray(ahead["label"]), fresh["label"])


@pytest.mark.parametrize("num_records", [21, 1500])
def test_process_shards_are_disjoint_and_cover_the_data(num_records):
    def epoch(process_index):
        with tfds.testing.mock_data(num_examples=num_records):
            name = "mnist" if num_records == 21 else "digits"
            ds = images.image_dataset(name, 4, seed=9, process_index=process_index,
                                      process_count=2)
            per_epoch = (num_records // 2) // 2
            return np.concatenate([ds[n]["index"] for n in range(per_epoch)])

    shard0, shard1 = epoch(0), epoch(1)
    assert len(shard0) == len(shard1) == len(set(shard0)) == num_records // 2
    assert set(shard0).isdisjoint(shard1)
    # Equal shards: with an odd count the last record is left out of every epoch.
    assert set(shard0) | set(shard1) == set(range(num_records - num_records % 2))


def test_frechet_distance_of_gaussians_matches_closed_form():
    # Diagonal Gaussians: d^2 = |mu_a - mu_b|^2 + sum (s_a - s_b)^2, estimated from samples.
    rng = np.random.default_rng(0)
    n, dim = 200_000, 3
    a = rng.normal(size=(n, dim)) * np.array([1.0, 2.0, 0.5])
    b = rng.normal(size=(n, dim)) * np.array([1.5, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    exact = 1.0 + 0.5**2 + 1.0**2
    # Sample covariances have relative error ~ sqrt(2/n) = 0.3%; the estimate is within 1%.
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
