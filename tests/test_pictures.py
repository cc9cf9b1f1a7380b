"""Pictures tell the truth: the toy plot reports and shows the samples outside its frame, and
image grids say what they show (step, sampler, NFE, parameters)."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from diffusion_lv.eval import image_grid, images
from diffusion_lv.eval import toy as toy_eval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLE = "digits: step 400, dpmpp_3m 20 NFE, ema_0.999 params"


def _known_samples():
    """100 samples: 80 inside the frame, 12 right of it, 5 below it, 3 NaN."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 2.0, (100, 2))
    x[80:92] = [10.0, 1.0]
    x[92:97] = [-1.0, -50.0]
    x[97:] = np.nan
    return x


def _figure_text(figure) -> str:
    return "\n".join(t.get_text() for t in figure.texts)


def test_out_of_frame_counts_what_the_frame_does_not_hold():
    stats = toy_eval.out_of_frame(_known_samples(), toy_eval.FRAME)
    assert stats["num_samples"] == 100
    assert stats["outside"] == 17
    assert stats["non_finite"] == 3
    assert stats["fraction"] == pytest.approx(0.20)
    assert stats["farthest"] == pytest.approx(50.0)
    inside = toy_eval.out_of_frame(np.zeros((10, 2)))
    assert inside["fraction"] == 0.0 and inside["outside"] == 0
    # A sample exactly on the edge is inside; one just beyond it is not.
    edge = np.array([[toy_eval.FRAME, -toy_eval.FRAME], [toy_eval.FRAME + 1e-3, 0.0]])
    assert toy_eval.out_of_frame(edge)["outside"] == 1


def test_the_plot_prints_the_fraction_and_draws_outside_samples_on_the_edge(tmp_path):
    samples = _known_samples()
    figure = toy_eval.plot_samples(samples, "ring8", title="ring8: step 7")
    text = _figure_text(figure)
    assert "20.0% (20) of the 100 samples outside the frame [-4.5, 4.5]^2" in text
    assert "farthest coordinate 50" in text and "3 non-finite, not drawn" in text
    assert figure._suptitle.get_text() == "ring8: step 7"
    inside, edge = figure.axes[1].collections
    assert len(inside.get_offsets()) == 80
    # The 17 finite samples outside are drawn, clipped onto the frame's edge where they left.
    offsets = np.asarray(edge.get_offsets())
    assert len(offsets) == 17
    assert np.all(np.abs(offsets) <= toy_eval.FRAME)
    np.testing.assert_allclose(offsets[:12], [[toy_eval.FRAME, 1.0]] * 12)
    np.testing.assert_allclose(offsets[12:], [[-1.0, -toy_eval.FRAME]] * 5)
    plt.close(figure)
    # Saved, the figure is the same picture with the same line.
    path = tmp_path / "samples.png"
    toy_eval.plot_samples(samples, "ring8", str(path))
    assert Image.open(path).size[0] > 0


def test_the_fraction_counts_every_sample_not_only_those_drawn():
    samples = np.zeros((1000, 2))
    samples[500:] = 99.0  # none of the first 10 (the drawn ones) is outside
    figure = toy_eval.plot_samples(samples, "ring8", max_points=10)
    text = _figure_text(figure)
    assert "50.0% (500) of the 1000 samples outside the frame" in text
    assert figure.axes[1].get_title() == "the first 10 of 1000 model samples"
    assert len(figure.axes[1].collections) == 1  # nothing drawn outside: no edge markers
    plt.close(figure)
    figure = toy_eval.plot_samples(np.zeros((5, 2)), "ring8")
    assert "0% (0) of the 5 samples outside the frame" in _figure_text(figure)
    plt.close(figure)


def test_percentages_are_never_rounded_to_zero_or_to_all():
    assert toy_eval._percent(0.0) == "0%"
    assert toy_eval._percent(1.0) == "100%"
    assert toy_eval._percent(1e-4) == "0.01%"
    assert toy_eval._percent(0.076) == "7.6%"
    assert toy_eval._percent(1 - 1e-5) == "99.999%"
    assert toy_eval._percent(0.5) == "50.0%"


def test_toy_periodic_picture_carries_its_title(tmp_path):
    drawn = {}

    class Board:
        def figure(self, step, name, figure):
            drawn[name] = (step, figure._suptitle.get_text(), _figure_text(figure))

    evaluator = toy_eval.ToyEvaluator("ring8", None)
    evaluator.periodic(np.zeros((8, 2)), str(tmp_path), 3, Board(),
                       title="ring8: step 3, euler 10 NFE, ema_0.999 params")
    step, title, text = drawn["samples"]
    assert (step, title) == (3, "ring8: step 3, euler 10 NFE, ema_0.999 params")
    assert "0% (0) of the 8 samples outside the frame" in text
    assert (tmp_path / "step_0000003.png").exists()
    evaluator.periodic(np.zeros((8, 2)), str(tmp_path), 4, Board())
    assert drawn["samples"][1] == "step 4"


def _dark_rows(picture: np.ndarray, rows: slice) -> int:
    return int(np.sum(picture[rows] < 128))


def test_grid_has_a_title_band_and_records_the_title(tmp_path):
    samples = np.random.default_rng(0).uniform(-1, 1, (256, 8, 8, 1))
    untitled = image_grid.image_grid(samples[:100], 10, scale=image_grid.auto_scale(8))
    path = images.write_grid(samples, str(tmp_path / "samples.png"), title=TITLE)
    picture = Image.open(path)
    assert picture.text["Title"] == f"{TITLE}; the first 100 of 256 samples"
    pixels = np.asarray(picture)
    band = pixels.shape[0] - untitled.shape[0]
    assert band > 10 and pixels.shape[1] == untitled.shape[1]
    np.testing.assert_array_equal(pixels[band:], untitled[..., 0])  # the grid itself unchanged
    assert _dark_rows(pixels, slice(0, band)) > 50  # the title is drawn, not an empty band
    # A different title draws different pixels; no title, no band and no text field.
    other = np.asarray(image_grid.add_title(untitled, "step 1, euler 5 NFE, raw params"))
    assert not np.array_equal(other[:band], pixels[:band, :, None])
    plain = Image.open(images.write_grid(samples, str(tmp_path / "plain.png")))
    assert plain.size == (untitled.shape[1], untitled.shape[0]) and "Title" not in plain.text


def test_a_long_title_wraps_to_the_picture_width():
    picture = np.zeros((20, 40, 3), np.uint8)
    one_line = image_grid.add_title(np.zeros((20, 400, 3), np.uint8), TITLE)
    wrapped = image_grid.add_title(picture, TITLE)
    assert wrapped.shape[1] == 40 and wrapped.shape[2] == 3
    assert wrapped.shape[0] - 20 > 2 * (one_line.shape[0] - 20)  # several lines, not one
    two = image_grid.add_title(np.zeros((20, 400, 3), np.uint8), "a\nb")
    assert two.shape[0] > one_line.shape[0]


def test_image_evaluator_titles_its_grid_and_strip(tmp_path):
    class Data:
        def examples(self, n):
            return np.zeros((n, 8, 8, 1), np.float32)

    evaluator = images.ImageEvaluator(Data(), None)
    samples = np.random.default_rng(1).uniform(-1, 1, (16, 8, 8, 1))
    evaluator.write_samples(samples, str(tmp_path), TITLE,
                            ve_denoiser=lambda z, sigma: z, sigma_range=(0.002, 80.0))
    assert Image.open(tmp_path / "samples.png").text["Title"] == f"{TITLE}; 16 samples"
    strip = Image.open(tmp_path / "denoising.png").text["Title"]
    assert strip.startswith(f"{TITLE}\nnoisy (top) and denoised (bottom) at sigma_ve = 0.02, ")
    assert strip.endswith(", 80")


def test_periodic_grid_titles_the_file_and_the_tensorboard_image(tmp_path):
    added = {}

    class Writer:
        def add_image(self, name, picture, step, dataformats):
            added[name] = (np.asarray(picture), step, dataformats)

    class Board:
        writer = Writer()

    samples = np.random.default_rng(2).uniform(-1, 1, (9, 8, 8, 1))
    path = images.periodic_grid(samples, str(tmp_path), 5, Board(),
                                title="digits: step 5, euler 10 NFE, ema_0.999 params")
    saved = Image.open(path)
    assert saved.text["Title"] == "digits: step 5, euler 10 NFE, ema_0.999 params; 9 samples"
    picture, step, _ = added["samples"]
    assert step == 5
    np.testing.assert_array_equal(np.asarray(saved), picture[..., 0])
    untitled = image_grid.image_grid(samples, 3, scale=image_grid.auto_scale(8))
    assert picture.shape[0] > untitled.shape[0]
    default = Image.open(images.periodic_grid(samples, str(tmp_path), 6, Board()))
    assert default.text["Title"] == "step 6; 9 samples"



def test_toy_summary_names_the_fraction_outside_the_plot():
    evaluator = toy_eval.ToyEvaluator("ring8", None)
    metrics = {"swd": 0.5, "swd_floor": 0.01, "swd_ratio": 50.0, "within_2x_floor": False}
    assert "outside" not in evaluator.summary({**metrics, "fraction_outside_plot_frame": 0.0})
    line = evaluator.summary({**metrics, "fraction_outside_plot_frame": 0.076})
    assert line.endswith("NOT within 2x); 7.6% of the samples outside the plot's frame")
