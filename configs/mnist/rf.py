"""MNIST x rf (the CIFAR-10 recipe of that method on 28x28 digits; see common.py)."""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config():
    return _common["mnist_config"]("rf")
