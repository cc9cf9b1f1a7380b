"""The README's Python snippets run as printed."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_sampling_snippet_runs_and_samples_the_ring():
    (snippet,) = python_blocks("Sampling any model with any sampler")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    x0, info = namespace["x0"], namespace["info"]
    assert x0.shape == (1000, 2) and info["nfe"] == 20
    # The ring of 8 Gaussians (radius 2, std 0.1): the exact median radius is 2.0025 with a
    # Monte Carlo sd of 1.25 * 0.1 / sqrt(1000) = 0.004; 0.1 (25 sd) only asks "is it the ring"
    # (a standard normal's median radius is 1.18), not the sampler's accuracy (tested elsewhere).
    radius = np.linalg.norm(np.asarray(x0), axis=1)
    assert abs(np.median(radius) - 2.0) < 0.1


def test_loading_snippet_runs_on_a_trained_run(tmp_path, monkeypatch):
    """The snippet as printed, from a directory holding ``runs/quickstart`` (a tiny run here)."""
    from diffusion_lv import main as main_lib
    from tests.test_run_dir import tiny_config

    main_lib.run(tiny_config(), str(tmp_path / "runs" / "quickstart"), "train")
    (snippet,) = python_blocks("Loading a trained run")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    run, x = namespace["run"], namespace["x"]
    assert run.step == 4 and x.shape == (1000, 2) and np.isfinite(np.asarray(x)).all()
