"""The `posttrain` command line: help, recipe show/check, stage hand-over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.cli import COMMANDS, main
from posttrain.config import load_recipe, to_dict

REPO = Path(__file__).resolve().parent.parent
THINK_SFT = REPO / "recipes" / "tiny" / "think" / "sft.yaml"

# Stand-in drivers with the drivers' contract, recording what they were given.
def fake_stage(config, resume=False):
    out = Path(config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "called.json").write_text(json.dumps({"resume": resume, "lr": config.optim.lr, "stage": config.stage}))
    return out


def fake_pipeline(variant, recipes, base, run_dir, start=None, overrides=(), **options):
    run_dir.mkdir(parents=True, exist_ok=True)
    args = {"variant": variant, "recipes": str(recipes), "base": str(base), "start": start, "overrides": list(overrides),
            "options": sorted(options)}
    (run_dir / "called.json").write_text(json.dumps(args))
    return run_dir / "rlvr"


@pytest.fixture
def with_drivers(monkeypatch):
    import posttrain.pipeline
    import posttrain.stages

    monkeypatch.setattr(posttrain.stages, "driver", lambda stage: fake_stage)
    monkeypatch.setattr(posttrain.pipeline, "run", fake_pipeline)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: --help and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------
# Help


def test_console_script_help():
    script = Path(sys.executable).parent / "posttrain"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("tiny", "recipe", "sft", "dpo", "rlvr", "pipeline", "verify", "demo"):
        assert name in result.stdout


@pytest.mark.parametrize("command", COMMANDS.names())
def test_every_subcommand_has_help(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: posttrain {command}")


@pytest.mark.parametrize("action", ["show", "check"])
def test_recipe_actions_have_help(action, capsys):
    code, out, _ = run_cli(["recipe", action, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: posttrain recipe {action}")


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
def test_stage_help_lists_its_arguments(stage, capsys):
    _, out, _ = run_cli([stage, "--help"], capsys)
    for option in ("--recipe", "--output-dir", "--resume", "key=value"):
        assert option in out


def test_pipeline_and_demo_help_list_their_arguments(capsys):
    _, pipeline, _ = run_cli(["pipeline", "--help"], capsys)
    _, demo, _ = run_cli(["demo", "--help"], capsys)
    assert all(option in pipeline for option in ("--variant", "--recipes", "--base", "--run-dir", "--from", "{think,instruct}"))
    assert all(option in demo for option in ("--tiny", "--run-dir"))


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run_cli([], capsys)
    assert code == 2 and "usage: posttrain" in err


# --------------------------------------------------------------------------
# recipe show / check


def test_recipe_show_json_is_one_object_equal_to_the_resolved_config(capsys):
    overrides = ["optim.lr=1e-5", "data.train.0.count=10"]
    code, out, err = run_cli(["recipe", "show", str(THINK_SFT), *overrides, "--json"], capsys)
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    shown = json.loads(out)
    assert shown == to_dict(load_recipe(THINK_SFT, overrides))
    assert shown["optim"]["lr"] == 1e-5 and shown["data"]["train"][0]["count"] == 10


def test_recipe_show_yaml_is_the_resolved_config(capsys):
    code, out, _ = run_cli(["recipe", "show", str(THINK_SFT)], capsys)
    assert code == 0
    assert yaml.safe_load(out) == to_dict(load_recipe(THINK_SFT))
    assert out.startswith("stage: sft\n")  # schema order, not alphabetical


def test_recipe_show_bad_override_exits_2_naming_it(capsys):
    code, out, err = run_cli(["recipe", "show", str(THINK_SFT), "optim.lrr=1"], capsys)
    assert code == 2 and out == ""
    assert "command line: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in err


def test_recipe_check_says_ok_per_file(capsys):
    paths = sorted(str(p) for p in (REPO / "recipes" / "tiny").rglob("[!_]*.yaml"))
    code, out, err = run_cli(["recipe", "check", *paths], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{p}: ok ({load_recipe(p).stage}, {load_recipe(p).variant})" for p in paths]


def test_recipe_check_reports_each_bad_file_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(THINK_SFT.read_text().replace("base: ../_sft.yaml", f"base: {REPO}/recipes/tiny/_sft.yaml") + "sedd: 1\n")
    code, out, err = run_cli(["recipe", "check", str(bad), str(THINK_SFT)], capsys)
    assert code == 2
    assert out == f"{THINK_SFT}: ok (sft, think)\n"
    assert f"{bad}: FAILED" in err and "unknown key 'sedd'; did you mean 'seed'?" in err


# --------------------------------------------------------------------------
# Stages


def test_stage_runs_the_driver_with_output_dir_overrides_and_resume(with_drivers, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(["sft", "--recipe", str(THINK_SFT), "--output-dir", str(out_dir), "--resume", "optim.lr=2e-5"], capsys)
    assert code == 0
    assert json.loads((out_dir / "called.json").read_text()) == {"resume": True, "lr": 2e-5, "stage": "sft"}
    assert out.strip() == f"sft done: {out_dir}"


def test_stage_bad_recipe_exits_2_before_the_driver(with_drivers, tmp_path, capsys):
    code, _, err = run_cli(["sft", "--recipe", str(THINK_SFT), "--output-dir", str(tmp_path / "run"), "optim.lr=-1"], capsys)
    assert code == 2 and "command line: key 'optim.lr': Input should be greater than 0" in err
    assert not (tmp_path / "run").exists()


def test_stage_refuses_another_stage_s_recipe(with_drivers, capsys):
    code, _, err = run_cli(["dpo", "--recipe", str(THINK_SFT)], capsys)
    assert code == 2 and "this is a sft recipe; run it with `posttrain sft`" in err


def test_stage_missing_recipe_file(capsys):
    code, _, err = run_cli(["sft", "--recipe", "nope.yaml"], capsys)
    assert code == 2 and "recipe not found: nope.yaml" in err


# --------------------------------------------------------------------------
# Pipeline


def test_pipeline_hands_its_arguments_over(with_drivers, tmp_path, capsys):
    argv = ["pipeline", "--variant", "instruct", "--base", "ckpt", "--run-dir", str(tmp_path), "--from", "dpo", "seed=3"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and out.strip() == f"instruct chain done: {tmp_path / 'rlvr'}"
    called = json.loads((tmp_path / "called.json").read_text())
    assert called == {"variant": "instruct", "recipes": "recipes/tiny/instruct", "base": "ckpt", "start": "dpo", "overrides": ["seed=3"],
                      "options": ["eval_size", "relocations", "suite_eval"]}


def test_pipeline_rejects_an_unknown_variant(capsys):
    code, _, err = run_cli(["pipeline", "--variant", "chat", "--run-dir", "x"], capsys)
    assert code == 2 and "invalid choice: 'chat'" in err
