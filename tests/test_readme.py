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
    # The ring of 8 Gaussians has radius 2 and std 0.1: samples lie near the circle.
    radius = np.linalg.norm(np.asarray(x0), axis=1)
    assert abs(np.median(radius) - 2.0) < 0.1
