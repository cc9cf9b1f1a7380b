"""Config files: the ``configs`` package and one loader, ``load_config("FILE.py[:ARG]")``.

A config file is an ml_collections config module: ``get_config()`` returns a ConfigDict, and
``get_config(ARG)`` receives the text after the first ``:`` of ``--config=FILE.py:ARG``, as
``config_flags.DEFINE_config_file`` passes it (``configs/toy.py:ring8,vp_sde``). The library's
config files live in the ``configs`` package at the repository root and import each other as
modules (``from configs import default``), as flax's examples and score_sde do; so the repository
root must be on ``sys.path`` whenever one runs. ``make_configs_importable()`` puts it there:
``diffusion_lv.main`` calls it before defining ``--config``, and ``load_config`` calls it for
tests, scripts, experiments and the sweep. Under pytest and ``python -m ...`` in the repository
root the root is on ``sys.path`` already (as it is for the ``experiments`` package).

The repository root is the folder holding ``configs/default.py``: the nearest one at or above
the config file being loaded, else the checkout this package is installed from (an editable
install, ``pip install -e .``), else the working directory.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pathlib
import sys

PACKAGE = "configs"
# The checkout this package lives in (editable install); a built install has no configs there.
_CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


def _is_root(folder: pathlib.Path) -> bool:
    """Holds configs/default.py, and is no package itself (experiments/configs is a subpackage)."""
    return (folder / PACKAGE / "default.py").is_file() and not (folder / "__init__.py").exists()


def find_root(start: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The repository root for a config file at ``start`` (None: no file), or None if none.

    The nearest folder at or above ``start`` that holds ``configs/default.py``, else the checkout
    this package is installed from, else the working directory.
    """
    candidates = []
    if start is not None:
        path = pathlib.Path(start).expanduser().resolve()
        candidates += [path, *path.parents]
    candidates += [_CHECKOUT, pathlib.Path.cwd()]
    return next((folder for folder in candidates if _is_root(folder)), None)


# --config's default: the quick-start config of this checkout (relative to the working directory
# for a built install, which has no configs next to it).
_DEFAULT_ROOT = _CHECKOUT if _is_root(_CHECKOUT) else pathlib.Path()
DEFAULT_CONFIG = str(_DEFAULT_ROOT / PACKAGE / "default.py")


def make_configs_importable(config_path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Put the repository root (see ``find_root``) first on ``sys.path``; returns it.

    Returns None, changing nothing, when no ``configs/default.py`` is found. Raises ImportError
    when a ``configs`` package of another folder is imported already (two checkouts at once).
    """
    root = find_root(config_path)
    if root is None:
        return None
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        where = [pathlib.Path(p).resolve() for p in getattr(loaded, "__path__", [])]
        if root / PACKAGE not in where:
            raise ImportError(
                f"the {PACKAGE!r} package is imported from {[str(p) for p in where]}, not from "
                f"{root / PACKAGE}: config files of two checkouts cannot be loaded in one process"
            )
    on_path = {pathlib.Path(p or os.curdir).resolve() for p in sys.path if isinstance(p, str)}
    if root not in on_path:
        sys.path.insert(0, str(root))
    return root


def split_spec(spec: str) -> tuple[str, str | None]:
    """``'FILE.py:ARG'`` -> ``('FILE.py', 'ARG')``; ``'FILE.py'`` -> ``('FILE.py', None)``."""
    path, sep, arg = str(spec).partition(":")
    return path, (arg if sep else None)


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A config file's path: as given (relative to the working directory), else relative to the
    repository root, so that ``configs/toy.py`` works from any directory."""
    given = pathlib.Path(path).expanduser()
    tried = [given]
    if not given.is_absolute():
        root = find_root()
        if root is not None:
            tried.append(root / given)
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"config file {str(path)!r} not found (tried {[str(p) for p in tried]})"
    )


def load_config_module(path: str | os.PathLike):
    """Run a config file as a fresh module (not registered in sys.modules), as --config does."""
    file = resolve(path)
    make_configs_importable(file)
    name = f"_config_file_{file.stem}"
    # Any file name, as --config's loader takes it (spec_from_file_location alone needs .py).
    loader = importlib.machinery.SourceFileLoader(name, str(file))
    module_spec = importlib.util.spec_from_file_location(name, file, loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        if err.name != PACKAGE:
            raise
        raise ModuleNotFoundError(
            f"{file} imports the {PACKAGE!r} package, which needs a {PACKAGE}/default.py at or "
            f"above it (the repository root)", name=PACKAGE,
        ) from err
    return module


def load_config(spec: str):
    """The ConfigDict: ``get_config()`` of ``'FILE.py'``, ``get_config(ARG)`` of ``'FILE.py:ARG'``.

    ``spec`` is what ``--config=`` takes, e.g. ``configs/toy.py:ring8,vp_sde``,
    ``configs/digits/rf.py`` or ``experiments/configs/split.py:full``. Relative paths are tried
    from the working directory, then from the repository root. The config comes back unlocked
    (``--config`` locks it: no new keys), exactly as ``get_config`` returns it.
    """
    path, arg = split_spec(spec)
    module = load_config_module(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ValueError(f"config file {path!r} has no get_config()")
    return get_config() if arg is None else get_config(arg)


def flatten(config) -> dict:
    """``{"section.key": value}`` of a ConfigDict or nested dict; lists become tuples."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                walk(value, name + ".")
            else:
                out[name] = tuple(value) if isinstance(value, list) else value

    walk(config, "")
    return out
