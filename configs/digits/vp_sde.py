"""digits x vp_sde (the paper's row on scikit-learn's 8x8 digits; see common.py)."""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config():
    return _common["digits_config"]("vp_sde")
