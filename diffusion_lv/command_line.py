"""The command line checked before absl and ml_collections parse it.

ml_collections reads ``--config`` and its ``--config.KEY`` overrides while the flag is defined,
and reports a missing file, a syntax error or a misspelled key with a long chained traceback.
``precheck(argv)`` loads the same config file first and names the problem in one line on stderr
(exit status 2), before anything is imported from JAX's compiled world or written anywhere.
"""

from __future__ import annotations

import sys

from diffusion_lv import config_files, config_schema

EXIT_USAGE = 2


def first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def check_command_line(argv) -> None:
    """The config file and every ``--config.KEY`` override, checked before flags are parsed
    (ml_collections reports these with long tracebacks): a ValueError in one line."""
    spec = config_files.DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    path = config_files.split_spec(spec)[0]
    try:
        config = config_files.load_config(spec)
    except FileNotFoundError:
        raise ValueError(f"--config={spec}: config file {path} does not exist") from None
    except SyntaxError as err:
        raise ValueError(
            f"--config={spec}: {err.filename} line {err.lineno}: {err.msg}"
        ) from None
    except ValueError as err:
        raise ValueError(f"--config={spec}: {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - whatever a config file raises, in one line
        raise ValueError(f"--config={spec}: {type(err).__name__}: {first_line(err)}") from None
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv
                 if a.startswith("--config.")]
    known = config_files.flatten(config)
    for key in overrides:
        if key not in known and not any(k.startswith(key + ".") for k in known):
            probe = config.copy_and_resolve_references()
            with probe.unlocked():
                node = probe
                *sections, name = key.split(".")
                for section in sections:
                    if section not in node:
                        node[section] = {}
                    node = node[section]
                node[name] = 0
            config_schema.check_keys(probe)  # names the key and the closest valid ones
            raise ValueError(f"--config.{key}: no such key in {path}")


def fail(message: str, status: int = EXIT_USAGE):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def precheck(argv) -> None:
    """``check_command_line``, failing in one line (a traceback with ``--verbosity``)."""
    try:
        check_command_line(argv)
    except ValueError as err:
        if any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
            raise
        fail(str(err))
