"""digits x ve_karras (the paper's row on scikit-learn's 8x8 digits; see common.py)."""

from configs.digits import common


def get_config():
    return common.digits_config("ve_karras")
