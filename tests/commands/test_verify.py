"""`posttrain verify`: one item, a JSONL file, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from posttrain.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_item(capsys):
    code, out, _ = run_cli(capsys, "--verifier", "math", "--prediction", "so \\boxed{\\frac{1}{2}}", "--label", "0.5")
    assert code == 0
    assert json.loads(out) == {"verifier": "math", "score": 1.0, "reason": "", "scored": True}


def test_one_item_label_as_json_and_context(capsys):
    label = json.dumps({"tests": ["assert f() == 1", "assert f() == 2"]})
    code, out, _ = run_cli(capsys, "--verifier", "code", "--prediction", "def f():\n    return 1", "--label", label)
    assert code == 0 and json.loads(out)["score"] == 0.5
    code, out, _ = run_cli(capsys, "--verifier", "code", "--prediction", "def f():\n    return 1", "--label", label,
                           "--context", '{"pass_threshold": 0.99}')
    assert code == 0 and json.loads(out)["score"] == 0.0


def test_unknown_verifier_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "--verifier", "mathh", "--prediction", "1", "--label", "1")
    assert code == 2 and "Did you mean 'math'" in err


def test_file_prints_pass_rates_and_writes_scored_rows(capsys, tmp_path):
    rows = [
        {"verifier": "gsm8k", "ground_truth": "12", "completion": "It is 12.", "id": 1},
        {"verifier": "gsm8k", "ground_truth": "12", "completion": "It is 13.", "id": 2},
        {"verifier": "math", "ground_truth": "\\frac{1}{2}", "completion": "\\boxed{0.5}", "id": 3},
        {"verifier": ["math", "format"], "ground_truth": "3", "completion": "\\boxed{3}", "id": 4},
    ]
    data = tmp_path / "rollouts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    code, out, _ = run_cli(capsys, "--data", str(data), "--workers", "1")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("gsm8k", "math", "["))}
    assert lines["gsm8k"][1:4] == ["2", "0.500", "0.500"]
    assert lines["math"][1:4] == ["1", "1.000", "1.000"]
    scored = [json.loads(line) for line in (tmp_path / "rollouts.scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [1, 2, 3, 4]
    assert [r["score"] for r in scored] == [1.0, 0.0, 1.0, 0.5]
    assert scored[0]["completion"] == "It is 12." and "reason" in scored[0]


def test_file_with_custom_fields_and_output(capsys, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"verifier": "string_match", "answer": "Paris", "output": "<answer>paris</answer>"}) + "\n")
    out_path = tmp_path / "out.jsonl"
    code, _, _ = run_cli(capsys, "--data", str(data), "--out", str(out_path), "--prediction-field", "output",
                         "--label-field", "answer", "--workers", "0")
    assert code == 0 and json.loads(out_path.read_text())["score"] == 1.0


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"verifier": "math", "completion": "1"}\nnot json\n', "rows.jsonl:2: not JSON"),
        ('{"verifier": "math"}\n', "rows.jsonl:1: missing field 'completion'"),
        ('{"verifier": "nope", "completion": "1"}\n', "rows.jsonl:1: field 'verifier': unknown verifier 'nope'"),
        ('[1, 2]\n', "rows.jsonl:1: a row must be a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(capsys, tmp_path, content, message):
    data = tmp_path / "rows.jsonl"
    data.write_text(content)
    code, _, err = run_cli(capsys, "--data", str(data))
    assert code == 2 and message in err
    assert not (tmp_path / "rows.scored.jsonl").exists()


def test_plugin_module_flag(capsys, tmp_path, monkeypatch):
    (tmp_path / "cli_plugin_mod.py").write_text(
        "import rewards\n@rewards.register('cli_plugin_len')\ndef f(prediction, label, **c):\n    return len(prediction) == label\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run_cli(capsys, "--module", "cli_plugin_mod", "--verifier", "cli_plugin_len", "--prediction", "abc", "--label", "3")
    assert code == 0 and json.loads(out)["score"] == 1.0


def test_command_line_entry_point():
    out = subprocess.run([sys.executable, "-m", "posttrain", "verify", "--verifier", "gsm8k", "--prediction", "7 apples", "--label", "7"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["score"] == 1.0
