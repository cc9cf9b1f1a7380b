"""Sweeps: a base config and a set of overrides become one workdir and one command per point.

    python scripts/sweep.py --config=configs/toy.py:ring8,rf --root=runs/lr_sweep \\
        --config.optimizer.learning_rate=1e-3,3e-4 --config.training.batch_size=256,512 \\
        [--set training.num_steps=2000] [--launcher=local|gpus|tpu ...] [--dry_run | --collect]

Points: the product of every ``--config.KEY=V1,V2,...`` (commas inside brackets, parentheses or
quotes do not split, so ``--config.training.ema_decays='(0.99,0.999)'`` is one value; repeating a
key adds choices), or ``--sweep_fn=FILE.py:NAME`` where ``NAME()`` returns a list of override
dicts ``{"optimizer.learning_rate": 1e-3, ...}`` (both together: every function point times
every product point). ``--set KEY=V`` fixes a key for all points. Point ``i`` runs in
``ROOT/p{i:03d}_<key=value,...>`` with ``python -m diffusion_lv.main``; ``ROOT/sweep.json`` lists
the points and their commands. ``--config`` is main's (``FILE.py`` or ``FILE.py:ARG``). Every
swept or set key must exist in the base config (checked before anything runs when the config
file is here).

Launchers:
  local  ``--parallel=N`` runs at a time on this machine (default 1: one after another);
  gpus   one host with GPUs ``--gpus=0,1,2,3``: each run sees ``--gpus_per_run`` of them through
         ``CUDA_VISIBLE_DEVICES`` (``--gpus_per_run=4``: one run over all four, data parallel);
  tpu    a cloud TPU VM or pod slice ``--tpu=NAME --zone=ZONE [--project=P]``: each point is one
         ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="..."`` that starts the
         job on every worker with ``--distributed=auto`` (points run one after another: a slice
         runs one job at a time). ``--repo_dir`` and ``--python`` locate the code on the VMs;
         ``ROOT`` must be a folder every worker and this machine share (an NFS / Filestore or a
         gcsfuse mount), since orbax writes checkpoints from all workers and ``--collect`` reads
         the metrics here.

``--env K=V`` adds environment variables to every run. ``--dry_run`` prints every workdir,
environment and command and launches nothing. ``--collect`` reads each point's ``metrics.json``
and prints (and writes ``ROOT/summary.md``) a markdown table; ``--metrics`` picks its columns.
Each run's output goes to ``ROOT/<point>.log``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys

from diffusion_lv import config_files, config_schema

LAUNCHERS = ("local", "gpus", "tpu")
DEFAULT_METRICS = ("step", "swd", "swd_ratio", "nll_bpd", "fd", "train_seconds")
TPU_ENV = {"PYTHONUNBUFFERED": "1"}  # stream the workers' logs through ssh


def split_values(text: str) -> list[str]:
    """``'1e-3,3e-4'`` -> two values; commas inside (), [], {} or quotes do not split."""
    values, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    if any(v == "" for v in values):
        raise ValueError(f"empty value in sweep choices {text!r}")
    return values


def parse_choices(args: list[str]) -> dict[str, list[str]]:
    """``['--config.a.b=1,2', '--config.c=x']`` -> ``{'a.b': ['1', '2'], 'c': ['x']}``."""
    choices: dict[str, list[str]] = {}
    for arg in args:
        match = re.fullmatch(r"--config\.([A-Za-z_][\w.]*)=(.*)", arg, re.DOTALL)
        if match is None:
            raise ValueError(
                f"unrecognised argument {arg!r}; sweep choices are --config.KEY=V1,V2,..."
            )
        choices.setdefault(match.group(1), []).extend(split_values(match.group(2)))
    return choices


def load_sweep_fn(spec: str) -> list[dict]:
    """``FILE.py:NAME`` -> ``NAME()``, a list of override dicts."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"--sweep_fn={spec!r} must be FILE.py:FUNCTION")
    module_spec = importlib.util.spec_from_file_location("sweep_definition", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    points = getattr(module, name)()
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"{spec} must return a list of dicts {{'section.key': value}}")
    return points


def format_value(value) -> str:
    """A config override value as main's --config.KEY= flag parses it."""
    if isinstance(value, (tuple, list)):
        inner = ",".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)


def expand(choices: dict[str, list[str]], function_points: list[dict] | None = None) -> list[dict]:
    """Override dicts (key -> string value): function points x the product of the choices."""
    product = [
        dict(zip(choices, values, strict=True)) for values in itertools.product(*choices.values())
    ]
    base = function_points if function_points else [{}]
    return [
        {**{k: format_value(v) for k, v in point.items()}, **combo}
        for point in base
        for combo in product
    ]


def point_name(index: int, overrides: dict[str, str]) -> str:
    """``p003_learning_rate=0.001,batch_size=256``: file-name safe, unique by index."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()]
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "", ",".join(parts))[:80]
    return f"p{index:03d}" + (f"_{slug}" if slug else "")


def main_command(python: str, config: str, workdir: str, overrides: dict[str, str],
                 extra_flags: list[str] = ()) -> list[str]:
    return [
        python, "-m", "diffusion_lv.main", f"--config={config}", f"--workdir={workdir}",
        *extra_flags, *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def plan(args, overrides_list: list[dict]) -> list[dict]:
    """One entry per point: name, overrides, workdir, env, argv (a list: no local shell)."""
    fixed = dict(parse_set(args.set))
    run_env = dict(parse_set(args.env, what="--env"))
    points = []
    for i, swept in enumerate(overrides_list):
        name = point_name(i, swept)
        workdir = os.path.join(args.root, name)
        overrides = {**fixed, **swept}
        env = dict(run_env)  # per point: the gpus launcher adds to it
        if args.launcher == "tpu":
            remote = main_command(args.python, args.config, workdir, overrides,
                                  ["--distributed=auto"])
            remote_env = {**TPU_ENV, **env}
            inner = (f"cd {shlex.quote(args.repo_dir)} && "
                     + " ".join(f"{k}={shlex.quote(v)}" for k, v in remote_env.items())
                     + " " + shlex.join(remote))
            argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}"]
            if args.project:
                argv.append(f"--project={args.project}")
            argv += ["--worker=all", f"--command={inner}"]
            env = {}
        else:
            argv = main_command(args.python, args.config, workdir, overrides)
        points.append({"name": name, "overrides": swept, "workdir": workdir, "env": env,
                       "argv": argv})
    if args.launcher == "gpus":
        slots = gpu_slots(args.gpus, args.gpus_per_run)
        for i, point in enumerate(points):
            point["env"]["CUDA_VISIBLE_DEVICES"] = slots[i % len(slots)]
            point["slot"] = i % len(slots)
    return points


def parse_set(items: list[str], what: str = "--set") -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must be KEY=VALUE")
        pairs.append((key.removeprefix("config."), value))
    return pairs


def gpu_slots(gpus: str, per_run: int) -> list[str]:
    """``'0,1,2,3'``, 2 per run -> ``['0,1', '2,3']``."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids:
        raise ValueError("--launcher=gpus needs --gpus=0,1,... (the GPU ids to use)")
    if per_run < 1 or len(ids) % per_run:
        raise ValueError(
            f"--gpus_per_run={per_run} must divide the number of GPUs {len(ids)} ({gpus!r})"
        )
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids), per_run)]


def shell_line(point: dict) -> str:
    """The command as one line a POSIX shell runs exactly (env assignments first)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in point["env"].items())
    return (env + " " if env else "") + shlex.join(point["argv"])


def run_point(point: dict, root: str) -> int:
    with open(os.path.join(root, point["name"] + ".log"), "w") as log:
        proc = subprocess.run(point["argv"], env={**os.environ, **point["env"]},
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    return proc.returncode


def launch(points: list[dict], root: str, parallel: int) -> dict[str, int]:
    """Run every point (``parallel`` at a time; gpus: one per slot); name -> return code."""
    os.makedirs(root, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        if "slot" in points[0]:  # each slot's points in order: a GPU never runs two at once
            by_slot: dict[int, list[dict]] = {}
            for point in points:
                by_slot.setdefault(point["slot"], []).append(point)
            futures = {pool.submit(lambda ps: {p["name"]: run_point(p, root) for p in ps}, ps): s
                       for s, ps in by_slot.items()}
            codes = {}
            for future in concurrent.futures.as_completed(futures):
                codes.update(future.result())
        else:
            codes = dict(zip([p["name"] for p in points],
                             pool.map(lambda p: run_point(p, root), points), strict=True))
    return codes


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def summary_table(points: list[dict], metrics: list[str] | None = None) -> str:
    """Markdown: one row per point, its swept values and the chosen metrics.json entries."""
    results = []
    for point in points:
        path = os.path.join(point["workdir"], "metrics.json")
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (FileNotFoundError, json.JSONDecodeError):
            results.append(None)
    if metrics is None:
        present = set().union(*(r.keys() for r in results if r))
        metrics = [m for m in DEFAULT_METRICS if m in present]
    keys = list(dict.fromkeys(k for p in points for k in p["overrides"]))
    header = ["point", *keys, "status", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point, result in zip(points, results, strict=True):
        row = [point["name"], *(format_cell(point["overrides"].get(k)) for k in keys),
               "done" if result else "no metrics.json",
               *(format_cell(result.get(m)) if result else "-" for m in metrics)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="base config FILE.py[:ARG] (main's --config)")
    p.add_argument("--root", required=True, help="folder of the sweep's workdirs")
    p.add_argument("--sweep_fn", help="FILE.py:FUNCTION returning a list of override dicts")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every point")
    p.add_argument("--env", action="append", default=[], help="K=V in every run's environment")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local")
    p.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    p.add_argument("--gpus", default="", help="gpus: GPU ids, e.g. 0,1,2,3")
    p.add_argument("--gpus_per_run", type=int, default=1)
    p.add_argument("--tpu", help="tpu: TPU VM / pod slice name")
    p.add_argument("--zone", help="tpu: zone, e.g. us-central2-b")
    p.add_argument("--project", help="tpu: Google Cloud project (default: gcloud's)")
    p.add_argument("--repo_dir", default="diffusion_lv", help="tpu: the code's folder on the VMs")
    p.add_argument("--python", default=None,
                   help="interpreter (default: this one locally, python3 on TPU VMs)")
    p.add_argument("--dry_run", action="store_true", help="print what would run; run nothing")
    p.add_argument("--collect", action="store_true", help="summary table of metrics.json files")
    p.add_argument("--metrics", help="comma-separated metrics.json keys for the table")
    return p


def build(argv: list[str]) -> tuple[argparse.Namespace, list[dict]]:
    """Parse the command line (errors as ValueError) and plan every point."""
    args, rest = parser().parse_known_args(argv)
    if args.python is None:
        args.python = "python3" if args.launcher == "tpu" else sys.executable
    if args.launcher == "tpu" and not (args.tpu and args.zone):
        raise ValueError("--launcher=tpu needs --tpu=NAME and --zone=ZONE")
    if args.parallel < 1:
        raise ValueError(f"--parallel={args.parallel} must be >= 1")
    function_points = load_sweep_fn(args.sweep_fn) if args.sweep_fn else None
    overrides = expand(parse_choices(rest), function_points)
    config_path, _ = config_files.split_spec(args.config)
    if os.path.isfile(config_path):  # a TPU run's config may exist only on the VMs
        check_keys(args.config, [key for key, _ in parse_set(args.set)]
                   + [key for point in overrides for key in point])
    return args, plan(args, overrides)


def check_keys(config_spec: str, keys: list[str]) -> None:
    """A key the base config lacks, or a key of the base config that the schema
    (configs/default.py) lacks, fails here before any run starts, naming the valid keys: a
    misspelled key would otherwise run N identical jobs."""
    config = config_files.load_config(config_spec)
    config_schema.check_keys(config)
    for key in dict.fromkeys(keys):
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not hasattr(node, "keys") or part not in node:
                parent = ".".join(parts[:i]) or "the config"
                valid = sorted(node.keys()) if hasattr(node, "keys") else "none (not a section)"
                raise ValueError(f"--config.{key}: {parent} in {config_spec} has no key "
                                 f"{part!r}; valid keys: {valid}")
            node = node[part]


def main(argv: list[str]) -> int:
    try:
        args, points = build(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.collect:
        metrics = args.metrics.split(",") if args.metrics else None
        table = summary_table(points, metrics)
        print(table)
        if os.path.isdir(args.root):
            with open(os.path.join(args.root, "summary.md"), "w") as f:
                f.write(table + "\n")
        return 0
    if args.dry_run:
        print(f"# {len(points)} point(s), launcher {args.launcher}")
        for point in points:
            print(f"# {point['name']}: workdir {point['workdir']}")
            print(shell_line(point))
        return 0
    os.makedirs(args.root, exist_ok=True)
    with open(os.path.join(args.root, "sweep.json"), "w") as f:
        json.dump({"argv": argv, "points": points}, f, indent=2)
    if args.launcher == "tpu":
        parallel = 1
    elif args.launcher == "gpus":
        parallel = len({point["slot"] for point in points})
    else:
        parallel = args.parallel
    codes = launch(points, args.root, parallel)
    failed = [name for name, code in codes.items() if code != 0]
    print(summary_table(points, args.metrics.split(",") if args.metrics else None))
    if failed:
        print(f"failed: {failed} (see ROOT/<point>.log)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
