"""The import layers of docs/design.md: a module imports only from lower layers (or its own
package). An upward or sideways import (``data`` -> ``models``, ``eval`` -> ``training``,
``samplers`` -> ``models``) fails here, naming the file, the line and both layers."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "diffusion_lv"

# Lowest first. Modules of one layer may not import each other, except within one package.
LAYERS = [
    ("util", {"__init__", "checks", "progress", "distributed", "config_files", "console"}),
    ("schedules", {"schedules"}),
    ("convert", {"convert"}),
    ("model description", {"parameterization", "oracle"}),
    ("core dynamics", {"langevin", "losses", "likelihood"}),
    ("likelihood bound", {"likelihood_bound"}),  # built on losses and likelihood's conventions
    ("samplers", {"samplers"}),
    ("networks and data", {"models", "data"}),
    ("conditional sampling", {"conditional"}),
    ("training and measurement", {"training", "eval"}),
    ("config schema", {"config_schema"}),
    ("config layer", {"experiment"}),
    ("post-training", {"evaluate", "run_dir", "command_line"}),
    ("a run from Python", {"trained_run"}),  # load_run: restores through evaluate and run_dir
    ("entry point", {"main"}),
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted module name inside the package (its first component)."""
    parts = module.split(".")
    if parts[0] != "diffusion_lv":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(tree: ast.AST, this: str):
    """``(line, dotted module)`` for every import in a module, function-level ones included."""
    package = this.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                # ``from diffusion_lv import eval`` names a module; ``from x.y import f`` a name.
                yield node.lineno, f"{base}.{alias.name}" if base == "diffusion_lv" else base


def violations(source: str, this: str) -> list[str]:
    own = unit_of(this)
    found = []
    for line, module in imported_modules(ast.parse(source), this):
        other = unit_of(module)
        if other is None or other == own:
            continue
        if other not in RANK:
            found.append(f"{this}:{line} imports {module}, which is in no layer")
        elif RANK[other] >= RANK[own]:
            how = "upward" if RANK[other] > RANK[own] else "sideways"
            found.append(
                f"{this}:{line} imports {module} ({how}: layer '{LAYERS[RANK[own]][0]}' may not "
                f"import layer '{LAYERS[RANK[other]][0]}')"
            )
    return found


def module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def test_every_module_is_in_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(RANK), sorted(units - set(RANK))


def test_imports_point_down():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(path.read_text(), module_name(path))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source,this", [
    ("from diffusion_lv.models import oracle", "diffusion_lv.data.toy"),  # sideways
    ("from diffusion_lv import metrics", "diffusion_lv.convert"),  # no layer / upward
    ("from diffusion_lv.training import progress", "diffusion_lv.eval.nll"),  # sideways
    ("def f():\n    from diffusion_lv import main\n", "diffusion_lv.samplers.api"),  # upward
    ("from diffusion_lv.experiment import Experiment", "diffusion_lv.eval.toy"),  # upward
    ("from diffusion_lv.eval import metrics", "diffusion_lv.conditional.api"),  # upward
])
def test_the_check_catches_wrong_imports(source, this):
    assert violations(source, this)


def test_the_check_allows_downward_and_same_package_imports():
    source = ("from diffusion_lv import convert, schedules\n"
              "from diffusion_lv.samplers import euler\nimport jax\n")
    assert violations(source, "diffusion_lv.samplers.api") == []
