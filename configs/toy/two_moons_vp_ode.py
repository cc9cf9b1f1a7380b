"""two_moons x VP-ODE (the paper's Table 7 row; see common.py)."""

import pathlib
import runpy

_common = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))


def get_config():
    return _common["toy_config"]("two_moons", "vp_ode")
