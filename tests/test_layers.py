"""The package's layers: every module imports, and imports point only down (or sideways within a layer).

The order, lowest first. A module belongs to the first entry that is its
name or a parent package of it.

| layer | modules | what lives there |
| --- | --- | --- |
| 0 | `rewards` | verifiers, their registry, the sandbox: imports nothing from `posttrain` |
| 1 | `posttrain.registry`, `config`, `checkpoints`, `metrics`, `lineage` | foundations: dispatch, recipes, files, logging |
| 2 | `posttrain.algorithms` | pure tensor maths |
| 3 | `posttrain.data` | sources, mixing, templates, packing, batches, per-stage preparation |
| 4 | `posttrain.objectives`, `learner`, `rollout`, `tiny` | run on learner ranks; models and optimizers; engines; the embedded default |
| 5 | `posttrain.orchestration` | Ray: cluster, actors, learner group, pools, rollout queue, learner-side phases |
| 6 | `posttrain.eval`, `plan`, `memory`, `pairs`, `model_card` | held-out evaluation; what reads checkpoints and recipes |
| 7 | `posttrain.stages` | the scaffold and the three drivers |
| 8 | `posttrain.pipeline`, `report` | the chain runner and its report |
| 9 | `posttrain.commands`, `cli`, `__main__` | the command line |

Lazy imports inside functions count too: a layer that imports upward only
when called still points up.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = [
    ["rewards"],
    ["posttrain.registry", "posttrain.config", "posttrain.checkpoints", "posttrain.metrics", "posttrain.lineage"],
    ["posttrain.algorithms"],
    ["posttrain.data"],
    ["posttrain.objectives", "posttrain.learner", "posttrain.rollout", "posttrain.tiny"],
    ["posttrain.orchestration"],
    ["posttrain.eval", "posttrain.plan", "posttrain.memory", "posttrain.pairs", "posttrain.model_card"],
    ["posttrain.stages"],
    ["posttrain.pipeline", "posttrain.report"],
    ["posttrain.commands", "posttrain.cli", "posttrain.__main__"],
]
PACKAGES = ("posttrain", "rewards")


def layer_of(module: str) -> int | None:
    """The layer of a module of this project (None for the bare `posttrain` package and third-party modules)."""
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def project_modules() -> dict[str, Path]:
    """{module name: file} for every module of the two packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = project_modules()


def imported_modules(module: str, path: Path) -> set[str]:
    """Project modules `module` imports, anywhere in its file; `from pkg import name` counts pkg.name if a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if layer_of(m) is None and m not in PACKAGES]
    assert not unplaced, f"modules with no layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = layer_of(module)
    if own is None:
        return  # the bare package __init__ files import nothing of the project
    upward = {name: layer_of(name) for name in imported_modules(module, MODULES[module])
              if layer_of(name) is not None and layer_of(name) > own}
    assert not upward, (f"{module} (layer {own}: {LAYERS[own]}) imports from higher layers: "
                        + ", ".join(f"{name} (layer {layer})" for name, layer in sorted(upward.items())))


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a data module that imports a stage driver is flagged."""
    fake = tmp_path / "sft.py"
    fake.write_text("def f():\n    from posttrain.stages import scaffold\n")
    imported = imported_modules("posttrain.data.sft", fake)
    assert "posttrain.stages.scaffold" in imported
    assert layer_of("posttrain.stages.scaffold") > layer_of("posttrain.data.sft")


def test_every_module_imports():
    failed = {}
    for module in sorted(MODULES):
        try:
            importlib.import_module(module)
        except Exception as err:  # report them all
            failed[module] = repr(err)
    assert not failed, failed
