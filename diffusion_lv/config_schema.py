"""The config schema: ``configs/default.py`` says which keys a config may have.

``check_keys(config)`` refuses a key that the schema lacks anywhere in a config (a file's own
misspelling such as ``config.optimizer.lr`` as much as an override), naming the closest valid
keys, and a tuple/list key holding something else. Sections whose keys depend on a choice take
their keys from it: ``model`` from the chosen network, ``sampler`` from every sampler's options,
``data`` from the data set (image options are named by ``ImageData.from_options``). The parser
(experiment.py), the command line (command_line.py) and the sweep all call it.
"""

from __future__ import annotations

import difflib
import functools
import os

from diffusion_lv import config_files, samplers
from diffusion_lv.data import toy
from diffusion_lv.models import unet
from diffusion_lv.models.mlp import MLP


class ConfigError(ValueError):
    """An invalid config value; the message names ``config.<key>``, the value and the choices."""


@functools.cache
def _schema() -> dict | None:
    """``configs/default.py`` flattened (None where the package runs without its configs)."""
    path = config_files.DEFAULT_CONFIG
    return config_files.flatten(config_files.load_config(path)) if os.path.isfile(path) else None


def _model_keys(config) -> set[str] | None:
    """The keys a ``model`` section may hold: the chosen network's options."""
    networks = {"unet": unet.UNet, "mlp": MLP}
    network = networks.get(config.get("model", {}).get("name"))
    if network is None:
        return None  # an unknown network: named by _network
    return {"name", *(f for f in network.__dataclass_fields__ if f not in ("parent", "name"))}


def _closest(key: str, valid: list[str]) -> list[str]:
    """Up to three valid keys a typo of ``key`` may have meant: same initials (``lr`` for
    ``learning_rate``), a prefix or part of it, then spelling (difflib)."""
    name = key.rsplit(".", 1)[-1]

    def last(k):
        return k.rsplit(".", 1)[-1]

    initials = [k for k in valid if "".join(w[0] for w in last(k).split("_") if w) == name]
    parts = [k for k in valid if len(name) >= 3 and (name in last(k) or last(k) in name)]
    spelling = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return list(dict.fromkeys(initials + parts + spelling))[:3]


def check_keys(config) -> None:
    """Every key of ``config`` is one of the schema's (``configs/default.py``; the ``model``
    section: the chosen network's options; ``sampler``: every sampler's options; ``data``: the
    data set's options), and tuple/list keys hold tuples or lists. A bad key names the closest
    valid ones."""
    schema = _schema()
    if schema is None:
        return
    sections = sorted({k.split(".")[0] for k in schema if "." in k})
    model_keys = _model_keys(config)
    for key, value in config_files.flatten(config).items():
        section = key.split(".")[0] if "." in key else ""
        if section and section not in sections:
            close = difflib.get_close_matches(section, sections, n=1)
            hint = f"did you mean config.{close[0]}? " if close else ""
            raise ConfigError(f"config.{section} is not a section of configs/default.py; "
                              f"{hint}valid sections: {sections}")
        if section == "model":
            valid = None if model_keys is None else {f"model.{k}" for k in model_keys}
        elif section == "sampler":  # every sampler's options (samplers.CONFIG_KEYS)
            valid = {f"sampler.{k}" for k in samplers.CONFIG_KEYS}
        elif section == "data":  # image sets: ImageData.from_options names unknown options
            valid = {"data.name"} if config.get("data", {}).get("name") in toy.DATASETS else None
        else:
            valid = {k for k in schema if (k.split(".")[0] if "." in k else "") == section}
        if valid is not None and key not in valid:
            close = _closest(key, sorted(valid))
            hint = (f"did you mean {', '.join('config.' + c for c in close)}? " if close else "")
            where = f"config.{section}" if section else "the top level of the config"
            raise ConfigError(
                f"config.{key} is not a key of configs/default.py; {hint}valid keys in "
                f"{where}: {sorted(k.rsplit('.', 1)[-1] for k in valid)}"
            )
        expected = schema.get(key)
        if isinstance(expected, tuple) and not isinstance(value, tuple | list):
            raise ConfigError(
                f"config.{key}={value!r} is not valid; valid: a tuple like {expected!r}"
            )
