"""What code reaches Ray's workers: this checkout's packages, shipped with the job (`distributed.ship_code`).

`code_env(modules)` is the part of a job's runtime env that ships code:
`py_modules` of the driver's `posttrain` and `rewards`, plus the verifier
plugins (`verifiers.modules`) that come from the driver's own source tree
rather than an installed package. Ray zips each once per content, every node
unpacks them and puts them first on its workers' PYTHONPATH, so a node started
from another directory, or with another posttrain installed, runs the
driver's code (`posttrain/orchestration/preflight.py` checks that it does).

Why `py_modules`, not `working_dir` (which OpenRLHF and verl submit jobs
with): it does not depend on the driver's current directory, does not change
the workers' (paths stay as the driver resolved them), and ships only the
packages, not a directory that may hold datasets and checkpoints. Ray takes
local paths only for a whole job (`ray.init`), not per actor, so a chain's job
ships every stage's plugins when it starts (posttrain/pipeline.py).
Third-party packages are not shipped: every node needs the same environment
(an image or a virtualenv), as on any Ray cluster.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from pathlib import Path
from typing import Iterable

SHIPPED_PACKAGES = ("posttrain", "rewards")  # the project's own; third-party ones are installed on every node
EXCLUDES = ["__pycache__", "*.pyc"]  # bytecode differs per Python and would change the package's hash


def installed(path: str) -> bool:
    """In the standard library or an environment's site-packages: there on every node that has the environment."""
    resolved = Path(path).resolve()
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return "site-packages" in resolved.parts or "dist-packages" in resolved.parts or \
        any(resolved.is_relative_to(Path(root).resolve()) for root in roots)


def local_module_path(name: str) -> str | None:
    """Where the top-level module of `name` lives on the driver (package directory or .py file); None when it
    is not importable, is a namespace package, or is installed (stdlib, site-packages: each node has those)."""
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    path = locations[0] if len(locations) == 1 else (spec.origin if not locations else None)
    if path is None or not os.path.exists(path) or installed(path):
        return None
    return path


def plugin_modules(configs: Iterable) -> list[str]:
    """The verifier plugin modules (`verifiers.modules`) the stage configs name, in order, once each."""
    names = [m for config in configs for m in getattr(getattr(config, "verifiers", None), "modules", ())]
    return list(dict.fromkeys(names))


def code_env(modules: Iterable[str] = ()) -> dict:
    """The runtime-env part that ships code: `py_modules` of this checkout's posttrain and rewards, plus `modules`
    (e.g. verifier plugins) found in the driver's own source tree; {} when there is nothing local to ship."""
    paths = []
    for name in (*SHIPPED_PACKAGES, *modules):
        path = local_module_path(name)
        if path is not None and path not in paths:
            paths.append(path)
    return {"py_modules": paths, "excludes": EXCLUDES} if paths else {}
