"""ml_collections config files, importable as the ``configs`` package.

Each file's ``get_config()`` (or ``get_config(arg)``, the text after ``:`` in
``--config=FILE.py:ARG``) returns a ConfigDict. The files import each other as modules
(``from configs import default``, ``from configs.cifar10 import common``), so the repository root
must be on ``sys.path``: ``diffusion_lv.config_files.make_configs_importable()`` puts it there
(``python -m diffusion_lv.main`` and ``config_files.load_config("FILE.py[:ARG]")`` call it).

* ``default.py``: every key, and the quick-start run (ring8, VE-Karras).
* ``toy.py``: the paper's rows on the four 2-D sets, ``configs/toy.py:SET,ROW``.
* ``digits/``, ``mnist/``, ``cifar10/``: the image recipes, one file per row.
"""
