"""Shared test configuration.

Slow tests (``@pytest.mark.slow``) run with ``--runslow``, ``RUN_SLOW=1`` or in CI (``CI=true``:
they add about 3 minutes on 2 cores).
Tests of exact identities use the ``x64`` fixture (float64 inside the test only).
"""

import os

import jax
import pytest

from diffusion_lv import config_files

# tests/ is a package, so pytest puts its parent, the repository root, on sys.path: that makes
# `experiments` and the `configs` package importable. This call keeps `configs` importable under
# any import mode (it adds the root only if it is missing).
config_files.make_configs_importable()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if (
        config.getoption("--runslow")
        or os.environ.get("RUN_SLOW") == "1"
        or os.environ.get("CI") == "true"
    ):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
