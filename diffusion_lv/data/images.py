"""Image data sets by name, read through one deterministic grain pipeline (no TensorFlow).

Data sets: ``digits`` (scikit-learn's 8x8 digits, in memory, see digits.py), and the TFDS sets
``mnist``, ``fashion_mnist``, ``cifar10`` and ``celeb_a`` (central 140x140 crop resized to
64x64, as in score_sde). TFDS sets are read with ``tfds.data_source`` (array_record files, numpy
records, no TensorFlow); they must be prepared once beforehand (see ``prepare_instructions``).

Conventions:

* A batch is ``{'image': float32 (b, H, W, C) in [-1, 1], 'label': int32 (b,), 'index': int64
  (b,)}`` (NHWC; ``index`` is the record's position in its split, for tests and debugging; the
  label is 0 for unlabelled sets).
* Pixel scaling: an integer pixel ``p`` with ``L`` grey levels (256, or 17 for the digits) maps to
  ``2 p / (L - 1) - 1``, exactly ``[-1, 1]``. With ``dequantize=True`` it maps to
  ``2 (p + u) / L - 1`` with ``u ~ U[0, 1)``: a continuous density whose likelihood is the
  discrete one's (the convention behind bits/dim).
* Pipeline order: shard by process -> shuffle -> repeat (reshuffled every epoch) -> decode ->
  random flip / dequantisation -> batch. Every random choice comes from the run's ``seed`` and the
  element's position, so batch ``n`` is a function of ``(data set, seed, process, n)`` alone.
* Resume: ``dataset[n]`` is batch ``n`` (random access), and the iterator of ``make_loader`` has
  ``get_state()`` / ``set_state()`` (a small JSON-able dict, ``{'next_index': n}``) to save in a
  checkpoint: a restored iterator yields exactly the batches the first run would have.
* Multi-host: process ``p`` of ``P`` reads records ``p, p + P, ...`` of the first ``P floor(N/P)``
  (equal shards, so every process runs the same number of steps per epoch) and makes batches of
  ``batch_size / P`` examples; ``device.py`` assembles them into one global array sharded over the
  mesh axis ``'data'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import numpy as np

from diffusion_lv.data import digits

CELEB_A_CROP = 140  # score_sde / NCSN central crop of the 218x178 aligned faces


@dataclasses.dataclass(frozen=True)
class ImageDatasetInfo:
    """What the pipeline and the models need to know about a data set.

    ``raw_shape`` is the stored image shape; ``image_shape`` what the pipeline serves (after an
    optional central ``crop`` to a square and a resize). ``num_classes = 0``: no labels.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    splits: tuple[str, ...]
    tfds_name: str | None = None  # None: an in-memory source
    num_levels: int = 256
    raw_shape: tuple[int, int, int] | None = None
    crop: int | None = None

    @property
    def resized(self) -> bool:
        return self.crop is not None or (
            self.raw_shape is not None and self.raw_shape != self.image_shape
        )


IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    info.name: info
    for info in (
        ImageDatasetInfo(
            "digits", digits.IMAGE_SHAPE, digits.NUM_CLASSES, digits.SPLITS,
            num_levels=digits.NUM_LEVELS,
        ),
        ImageDatasetInfo("mnist", (28, 28, 1), 10, ("train", "test"), "mnist"),
        ImageDatasetInfo("fashion_mnist", (28, 28, 1), 10, ("train", "test"), "fashion_mnist"),
        ImageDatasetInfo("cifar10", (32, 32, 3), 10, ("train", "test"), "cifar10"),
        ImageDatasetInfo(
            "celeb_a", (64, 64, 3), 0, ("train", "validation", "test"), "celeb_a",
            raw_shape=(218, 178, 3), crop=CELEB_A_CROP,
        ),
    )
}


def get_info(name: str) -> ImageDatasetInfo:
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; valid choices: {sorted(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[name]


# -- sources --------------------------------------------------------------------------------


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set has no prepared array_record files in the data directory."""


def prepare_instructions(tfds_name: str, data_dir: str | None = None) -> str:
    where = f", data_dir={data_dir!r}" if data_dir else ""
    dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"the TFDS data set {tfds_name!r} is not prepared as array_record"
        f"{' in ' + str(data_dir) if data_dir else ' in the default TFDS data directory'}. "
        "Prepare it once, on a machine with network access and the optional extra "
        "`pip install tensorflow` (TFDS builders need it to download and encode):\n"
        f"  tfds build {tfds_name} --file_format=array_record{dir_flag}\n"
        "or in Python:\n"
        f"  tfds.builder({tfds_name!r}{where}).download_and_prepare(file_format='array_record')\n"
        "Training then reads the files without TensorFlow (set TFDS_DATA_DIR or pass data_dir)."
    )


class IndexedSource:
    """Reads a random-access source one record at a time (``len`` and ``[i]`` only).

    TFDS's batched ``__getitems__`` is not used: it fails under ``tfds.testing.mock_data``.
    """

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        return self._source[index]

    def __repr__(self) -> str:
        return f"IndexedSource({self._source!r})"


def tfds_source(tfds_name: str, split: str, data_dir: str | None = None) -> IndexedSource:
    """``tfds.data_source`` of a prepared data set; never downloads.

    A missing data set fails in milliseconds with ``DatasetNotPreparedError`` (a download attempt
    on an offline machine would retry for minutes). ``tfds.testing.mock_data`` is honoured.
    """
    import tensorflow_datasets as tfds  # lazy: half a second of imports

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    try:
        # as_data_source only reads local files (mock_data replaces it with a generator).
        source = builder.as_data_source(split=split)
    except Exception as err:
        if builder.is_prepared():
            raise
        raise DatasetNotPreparedError(prepare_instructions(tfds_name, data_dir)) from err
    return IndexedSource(source)


def _check_split(info: ImageDatasetInfo, split: str) -> None:
    base = split.split("[", 1)[0]
    if base not in info.splits or (info.tfds_name is None and base != split):
        slicing = " (TFDS slicing like 'train[:90%]' allowed)" if info.tfds_name else ""
        raise ValueError(
            f"unknown split {split!r} of {info.name!r}; valid choices: {list(info.splits)}"
            f"{slicing}"
        )


def open_source(name: str, split: str = "train", data_dir: str | None = None):
    """The random-access source of records ``{'image': uint8 HWC, 'label': int, ...}``."""
    info = get_info(name)
    _check_split(info, split)
    if info.tfds_name is None:
        return digits.DigitsSource(split)
    return tfds_source(info.tfds_name, split, data_dir)


# -- per-example preprocessing (pure numpy) -------------------------------------------------


def center_crop_resize(image: np.ndarray, crop: int | None, shape: tuple[int, int]) -> np.ndarray:
    """Central square crop of side ``crop`` (if given), then an antialiased bilinear resize."""
    from PIL import Image  # lazy: only resized data sets need it

    if crop is not None:
        top = (image.shape[0] - crop) // 2
        left = (image.shape[1] - crop) // 2
        image = image[top : top + crop, left : left + crop]
    if image.shape[:2] == tuple(shape):
        return image
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    # PIL filters widen with the scale factor when shrinking: antialiased like tf's resize.
    out = np.asarray(pil.resize((shape[1], shape[0]), Image.BILINEAR))
    return out[..., None] if squeeze else out


def scale_pixels(image: np.ndarray, num_levels: int, noise: np.ndarray | None = None) -> np.ndarray:
    """Integer pixels to float32 in ``[-1, 1]``; ``noise`` in ``[0, 1)`` dequantises."""
    pixels = image.astype(np.float32)
    if noise is None:
        return pixels * np.float32(2.0 / (num_levels - 1)) - np.float32(1.0)
    return (pixels + noise) * np.float32(2.0 / num_levels) - np.float32(1.0)


def unscale_pixels(images: np.ndarray, num_levels: int = 256) -> np.ndarray:
    """The inverse of ``scale_pixels`` (without noise), rounded and clipped: ``uint8`` pixels."""
    pixels = (np.asarray(images, np.float32) + 1.0) * (0.5 * (num_levels - 1))
    return np.clip(np.rint(pixels), 0, num_levels - 1).astype(np.uint8)


def _decoder(info: ImageDatasetInfo) -> Callable:
    def decode(indexed_record):
        index, record = indexed_record
        image = np.asarray(record["image"])
        if info.resized:
            image = center_crop_resize(image, info.crop, info.image_shape[:2])
        label = record["label"] if info.num_classes else 0
        return {"image": image, "label": np.int32(label), "index": np.int64(index)}

    return decode


def _finisher(info: ImageDatasetInfo, random_flip: bool, dequantize: bool) -> Callable:
    """Flip / dequantise (with the element's own ``rng``) and scale to ``[-1, 1]``."""

    def finish(example, rng: np.random.Generator | None = None):
        image = example["image"]
        if random_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        noise = rng.random(image.shape, dtype=np.float32) if dequantize else None
        return {**example, "image": scale_pixels(image, info.num_levels, noise)}

    return finish


def _stream_seed(seed: int, stream: int) -> int:
    """Independent 32-bit seeds for the shuffle and the augmentation, from the run's seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


# -- the pipeline ---------------------------------------------------------------------------


def _process_defaults(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    return process_index, process_count


def image_dataset(
    name: str,
    batch_size: int,
    *,
    split: str = "train",
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    random_flip: bool = False,
    dequantize: bool = False,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    data_dir: str | None = None,
    source=None,
) -> grain.MapDataset:
    """This process's batches as a random-access grain dataset: ``dataset[n]`` is batch ``n``.

    ``batch_size`` is the global batch (over all processes); each process serves
    ``batch_size / process_count`` examples. ``num_epochs=None`` repeats forever (reshuffling
    each epoch). ``source`` replaces the named data set's records (tests, custom TFDS builders);
    ``name`` still gives shapes, levels and labels. Process index and count default to JAX's.
    """
    info = get_info(name)
    process_index, process_count = _process_defaults(process_index, process_count)
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of the process count "
            f"{process_count}"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs!r} must be >= 1 or None (repeat forever)")
    source = open_source(name, split, data_dir) if source is None else source
    num_records = len(source) - len(source) % process_count
    if num_records < process_count:
        raise ValueError(f"{name}/{split} has {len(source)} records, fewer than the processes")

    size = len(source)
    # grain passes positions beyond one epoch down unchanged (sources wrap them): wrap here too.
    ds = grain.MapDataset.source(source).map_with_index(lambda i, record: (i % size, record))
    ds = ds[:num_records][process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=_stream_seed(seed, 0))
    ds = ds.repeat(num_epochs)
    ds = ds.map(_decoder(info))
    finish = _finisher(info, random_flip, dequantize)
    if random_flip or dequantize:
        ds = ds.random_map(finish, seed=_stream_seed(seed, 1))
    else:
        ds = ds.map(finish)
    return ds.batch(batch_size // process_count, drop_remainder=drop_remainder)


def make_loader(
    dataset: grain.MapDataset, num_threads: int = 4, prefetch: int = 8
) -> grain.DatasetIterator:
    """An iterator over ``dataset`` read ahead by ``num_threads`` threads, ``prefetch`` batches.

    Its ``get_state()`` counts consumed batches only (read-ahead is not part of the state).
    """
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


# -- a configured data set (what a run reads from its config's ``data`` section) ---------------


@dataclasses.dataclass(frozen=True)
class ImageData:
    """An image data set with its pipeline options; builds the training loop's batches.

    ``train_split`` feeds training; ``eval_split`` gives reference images (metrics, NLL,
    denoising strips). ``num_threads`` threads read records.
    """

    name: str
    random_flip: bool = False
    dequantize: bool = False
    data_dir: str | None = None
    num_threads: int = 4
    train_split: str = "train"
    eval_split: str = "test"

    def __post_init__(self):
        info = get_info(self.name)
        for split in (self.train_split, self.eval_split):
            _check_split(info, split)
        if self.num_threads < 1:
            raise ValueError(f"num_threads={self.num_threads!r} must be >= 1")

    @classmethod
    def from_options(cls, options: dict) -> ImageData:
        """From plain options (a config's ``data`` section); unknown keys raise ValueError."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(f"unknown image data option(s) {unknown}; valid: {sorted(fields)}")
        return cls(**options)

    @property
    def info(self) -> ImageDatasetInfo:
        return get_info(self.name)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    def train_dataset(self, global_batch: int, seed: int, **kwargs) -> grain.MapDataset:
        return image_dataset(
            self.name, global_batch, split=self.train_split, seed=seed,
            random_flip=self.random_flip, dequantize=self.dequantize, data_dir=self.data_dir,
            **kwargs,
        )

    def step_batches(self, mesh, global_batch: int, seed: int, with_labels: bool = False):
        """``batches(first_step, length)`` for the training loop (see ``device.StepBatches``)."""
        from diffusion_lv.data.device import StepBatches

        return StepBatches(self.train_dataset(global_batch, seed), mesh, with_labels,
                           self.num_threads)

    def num_examples(self, split: str | None = None) -> int:
        """The number of images in a split (default ``eval_split``)."""
        split = self.eval_split if split is None else split
        return len(open_source(self.name, split, self.data_dir))

    def examples(self, num: int, split: str | None = None) -> np.ndarray:
        """The first ``num`` images of a split (default ``eval_split``), in record order,
        without augmentation: ``float32 (num, H, W, C)`` in ``[-1, 1]``."""
        split = self.eval_split if split is None else split
        source = open_source(self.name, split, self.data_dir)
        if not 1 <= num <= len(source):
            raise ValueError(f"num={num} must be in [1, {len(source)}] for {self.name}/{split}")
        ds = image_dataset(
            self.name, num, split=split, shuffle=False, num_epochs=1, process_index=0,
            process_count=1, source=source,
        )
        return ds[0]["image"]
