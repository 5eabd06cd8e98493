"""rewards/README.md: the custom verifier example works end to end, as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "rewards" / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL)


def test_custom_verifier_example_runs(tmp_path):
    module = blocks("python")[0]
    assert len(module.strip().splitlines()) < 15
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "myrewards.py").write_text(module)
    row = json.loads(blocks("json")[0])
    command = shlex.split(blocks("bash")[0].strip())
    assert command[0] == "posttrain" and "--module" in command
    out = subprocess.run([sys.executable, "-m", "posttrain", *command[1:]], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["score"] == 1.0
    assert row["verifier"] == "word_count" and row["ground_truth"] == 5


def test_recipe_snippet_is_a_valid_verifiers_section():
    import yaml

    from posttrain.config import VerifiersSection

    section = VerifiersSection(**yaml.safe_load(blocks("yaml")[0])["verifiers"])
    assert section.modules == ["myproject.myrewards"]
