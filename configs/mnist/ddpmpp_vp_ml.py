"""MNIST x ddpmpp_vp_ml (the CIFAR-10 recipe of that method on 28x28 digits; see common.py)."""

from configs.mnist import common


def get_config():
    return common.mnist_config("ddpmpp_vp_ml")
