"""Which code a job ships to Ray's workers (posttrain/orchestration/shipping.py), without starting Ray.
Workers importing the shipped copy on another raylet: tests/stages/test_multinode.py."""

from __future__ import annotations

from pathlib import Path

import posttrain
import rewards
from posttrain.orchestration.shipping import code_env, plugin_modules


def test_code_env_ships_the_project_and_local_plugins_not_installed_modules(tmp_path, monkeypatch):
    (tmp_path / "my_verifiers.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = code_env(["my_verifiers", "json", "yaml", "not_a_module_anywhere"])
    assert env["py_modules"] == [str(Path(posttrain.__file__).parent), str(Path(rewards.__file__).parent),
                                 str(tmp_path / "my_verifiers.py")]
    assert "__pycache__" in env["excludes"]


def test_a_chain_ships_the_plugins_every_stage_names_once():
    class Stage:  # plugin_modules reads verifiers.modules where a stage has them
        def __init__(self, modules):
            self.verifiers = type("V", (), {"modules": modules})()

    assert plugin_modules([object(), Stage(["a", "b"]), Stage(["b", "c"])]) == ["a", "b", "c"]
