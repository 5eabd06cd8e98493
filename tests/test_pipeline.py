"""The chain runner: inputs chained stage to stage, the skip rule, --from, relocation, errors.

The stages here are cheap stand-ins registered in a stage-driver registry,
the same mechanism the runner uses for the real drivers. Each writes a real
export (atomic directory, manifest with the parent's hash, the recipe hash
and data fingerprints, as `posttrain.checkpoints` builds it) whose "weights"
are a deterministic function of its inputs, so a changed input gives a
changed checkpoint and a rerun of the same inputs gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from posttrain.checkpoints import (
    EXPORT_DIR, MANIFEST, MODEL_CARD, atomic_dir, build_manifest, checkpoint_hash, directory_hash, finalize_export,
    read_json, write_json_atomic,
)
from posttrain.cli import main
from posttrain.config import config_hash, to_dict
from posttrain.registry import Registry, UnknownNameError
from posttrain import pipeline as P

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "tiny"
DATA = ("sft_think", "sft_instruct", "dpo_think", "dpo_instruct", "rlvr")


class FakeStage:
    """Writes OUT/checkpoint like a real stage; its weights hash the stage's inputs. Records its calls."""

    def __init__(self, calls: list[str], fail: bool = False):
        self.calls, self.fail = calls, fail

    def __call__(self, config) -> Path:
        self.calls.append(config.stage)
        if self.fail:
            raise RuntimeError(f"{config.stage} failed")
        out = Path(config.output.dir)
        manifest = build_manifest(stage=config.stage, config=to_dict(config), config_hash=config_hash(config),
                                  parent=config.model.path, metrics={"loss": 1.0, "steps": 3}, wall_time_s=0.01)
        seed = json.dumps([manifest["parent"]["hash"], manifest["config_hash"], manifest["data_sources"]])
        with atomic_dir(out / EXPORT_DIR) as tmp:
            (tmp / "config.json").write_text('{"model_type": "olmo3"}')
            (tmp / "model.safetensors").write_bytes(hashlib.sha256(seed.encode()).digest())
            finalize_export(tmp, manifest)
        write_json_atomic(out / MANIFEST, read_json(out / EXPORT_DIR / MANIFEST))
        return out


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A stand-in tiny default: a base checkpoint and every data file the tiny recipes name."""
    root = tmp_path / "tiny"
    (root / "base").mkdir(parents=True)
    (root / "base" / "config.json").write_text('{"model_type": "olmo3"}')
    (root / "base" / "model.safetensors").write_bytes(b"base weights")
    for name in DATA:
        for split in ("train", "heldout"):
            path = root / "data" / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": name, "split": split}) + "\n")
    return root


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def drivers(calls) -> Registry:
    registry: Registry = Registry("stage driver")
    for stage in P.CHAIN:
        registry.register(stage, FakeStage(calls))
    return registry


def run_chain(tiny: Path, run_dir: Path, drivers: Registry, variant: str = "think", **kwargs) -> Path:
    return P.run(variant, RECIPES / variant, kwargs.pop("base", None), run_dir,
                 relocations=(P.Relocation(P.TINY_ROOT, tiny),), drivers=drivers, **kwargs)


def actions(run_dir: Path) -> list[tuple[str, str, str]]:
    return [(s["stage"], s["action"], s["reason"]) for s in read_json(run_dir / P.PIPELINE_FILE)["stages"]]


# --------------------------------------------------------------------------
# Chaining


def test_each_stage_reads_the_previous_checkpoint_and_writes_its_own_dir(tiny, tmp_path, drivers, calls, capsys):
    run_dir = tmp_path / "run"
    out = run_chain(tiny, run_dir, drivers)
    assert out == run_dir / "rlvr" and calls == ["sft", "dpo", "rlvr"]
    manifests = {s: read_json(run_dir / s / EXPORT_DIR / MANIFEST) for s in P.CHAIN}
    assert manifests["sft"]["parent"] == {"path": str(tiny / "base"), "hash": directory_hash(tiny / "base")}
    assert manifests["dpo"]["parent"]["path"] == str(run_dir / "sft" / EXPORT_DIR)
    assert manifests["dpo"]["parent"]["hash"] == manifests["sft"]["content_hash"]
    assert manifests["rlvr"]["parent"]["hash"] == manifests["dpo"]["content_hash"]
    # relocated data: every source the recipe names now lies under the tiny dir, with its fingerprint
    assert manifests["dpo"]["data_sources"] == {
        str(tiny / "data/dpo_think/train.jsonl"): checkpoint_hash_of_file(tiny / "data/dpo_think/train.jsonl"),
        str(tiny / "data/dpo_think/heldout.jsonl"): checkpoint_hash_of_file(tiny / "data/dpo_think/heldout.jsonl"),
    }
    assert manifests["rlvr"]["config"]["output"]["dir"] == str(run_dir / "rlvr")
    assert actions(run_dir) == [(s, "ran", "no previous run") for s in P.CHAIN]
    table = capsys.readouterr().out
    assert f"think chain in {run_dir}" in table and str(run_dir / "rlvr" / EXPORT_DIR) in table


def checkpoint_hash_of_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_every_checkpoint_gets_a_model_card_naming_its_lineage(tiny, tmp_path, drivers):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    card = (run_dir / "rlvr" / EXPORT_DIR / MODEL_CARD).read_text()
    assert "# Think model after SFT -> DPO -> RLVR" in card
    assert f"Base: `{tiny / 'base'}`" in card
    for stage in P.CHAIN:
        content = read_json(run_dir / stage / EXPORT_DIR / MANIFEST)["content_hash"]
        assert content in card  # each stage's checkpoint hash is on the card
    # the card is documentation: writing it does not change the checkpoint's hash
    assert directory_hash(run_dir / "rlvr" / EXPORT_DIR, exclude=(MANIFEST, MODEL_CARD)) == \
        read_json(run_dir / "rlvr" / EXPORT_DIR / MANIFEST)["content_hash"]


# --------------------------------------------------------------------------
# The skip rule


def test_a_rerun_with_unchanged_inputs_skips_every_stage(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    before = {s: (run_dir / s / EXPORT_DIR / "model.safetensors").stat().st_mtime_ns for s in P.CHAIN}
    calls.clear()
    run_chain(tiny, run_dir, drivers)
    assert calls == []
    assert actions(run_dir) == [(s, "skipped", "inputs unchanged") for s in P.CHAIN]
    assert before == {s: (run_dir / s / EXPORT_DIR / "model.safetensors").stat().st_mtime_ns for s in P.CHAIN}


def test_a_chain_copied_elsewhere_is_done_there_too(tiny, tmp_path, drivers, calls):
    run_chain(tiny, tmp_path / "run", drivers)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    calls.clear()
    run_chain(tiny, tmp_path / "copy", drivers)  # other model.path and output.dir: not part of the result
    assert calls == []
    assert actions(tmp_path / "copy") == [(s, "skipped", "inputs unchanged") for s in P.CHAIN]
    run_chain(tiny, tmp_path / "copy", drivers, overrides=("logging.every=3",))  # nor is logging
    assert calls == []


def test_recipe_hash_leaves_out_input_path_output_dir_and_logging():
    config = {"model": {"path": "a", "dtype": "float32"}, "output": {"dir": "x", "save_every": 0},
              "logging": {"every": 1}, "optim": {"lr": 1e-4}}
    moved = {"model": {"path": "b", "dtype": "float32"}, "output": {"dir": "y", "save_every": 0},
             "logging": {"every": 5}, "optim": {"lr": 1e-4}}
    assert P.recipe_hash(config) == P.recipe_hash(moved)
    assert P.recipe_hash(config) != P.recipe_hash({**config, "optim": {"lr": 2e-4}})
    assert P.recipe_hash(config) != P.recipe_hash({**config, "output": {"dir": "x", "save_every": 5}})
    assert config["model"]["path"] == "a"  # the argument is left as it was


def test_changed_data_reruns_that_stage_and_the_ones_after_it(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    (tiny / "data" / "dpo_think" / "heldout.jsonl").write_text('{"changed": true}\n')
    run_chain(tiny, run_dir, drivers)
    assert calls == ["dpo", "rlvr"]
    assert actions(run_dir) == [("sft", "skipped", "inputs unchanged"), ("dpo", "ran", "data changed"),
                                ("rlvr", "ran", "input checkpoint changed")]


def test_a_stage_override_reruns_only_that_stage(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    run_chain(tiny, run_dir, drivers, overrides=("rlvr:grpo.steps=7",))
    assert calls == ["rlvr"]
    assert actions(run_dir)[2] == ("rlvr", "ran", "recipe changed")
    assert read_json(run_dir / "rlvr" / MANIFEST)["config"]["grpo"]["steps"] == 7
    calls.clear()
    run_chain(tiny, run_dir, drivers, overrides=("seed=5",))  # every stage's recipe changes
    assert calls == ["sft", "dpo", "rlvr"]
    assert [a[2] for a in actions(run_dir)] == ["recipe changed", "input checkpoint changed", "input checkpoint changed"]


def test_a_changed_base_checkpoint_reruns_the_whole_chain(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    (tiny / "base" / "model.safetensors").write_bytes(b"other base weights")
    run_chain(tiny, run_dir, drivers)
    assert calls == ["sft", "dpo", "rlvr"]
    assert actions(run_dir)[0] == ("sft", "ran", "input checkpoint changed")


def test_an_incomplete_checkpoint_is_rerun(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    (run_dir / "dpo" / EXPORT_DIR / "model.safetensors").unlink()
    run_chain(tiny, run_dir, drivers)
    assert calls == ["dpo"]  # same inputs, same bytes again: rlvr's input hash is unchanged
    assert actions(run_dir) == [("sft", "skipped", "inputs unchanged"), ("dpo", "ran", "previous checkpoint incomplete"),
                                ("rlvr", "skipped", "inputs unchanged")]


def test_a_failed_stage_stops_the_chain_and_the_next_run_resumes_there(tiny, tmp_path, calls):
    run_dir = tmp_path / "run"
    failing: Registry = Registry("stage driver")
    failing.register("sft", FakeStage(calls))
    failing.register("dpo", FakeStage(calls, fail=True))
    failing.register("rlvr", FakeStage(calls))
    with pytest.raises(RuntimeError, match="dpo failed"):
        run_chain(tiny, run_dir, failing)
    assert calls == ["sft", "dpo"] and not (run_dir / P.PIPELINE_FILE).exists()
    calls.clear()
    working: Registry = Registry("stage driver")
    for stage in P.CHAIN:
        working.register(stage, FakeStage(calls))
    run_chain(tiny, run_dir, working)
    assert calls == ["dpo", "rlvr"]


# --------------------------------------------------------------------------
# --from


def test_from_reruns_that_stage_and_later_ones_and_keeps_earlier_ones(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    run_chain(tiny, run_dir, drivers, start="dpo")
    assert calls == ["dpo", "rlvr"]
    assert actions(run_dir) == [("sft", "kept", "before --from"), ("dpo", "ran", "--from"), ("rlvr", "ran", "--from")]
    calls.clear()
    run_chain(tiny, run_dir, drivers, start="sft")
    assert calls == ["sft", "dpo", "rlvr"]


def test_from_reports_a_stale_earlier_stage_without_rerunning_it(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    run_chain(tiny, run_dir, drivers)
    calls.clear()
    run_chain(tiny, run_dir, drivers, start="rlvr", overrides=("sft:optim.lr=3e-4",))
    assert calls == ["rlvr"]
    assert actions(run_dir)[:2] == [("sft", "kept", "before --from (stale: recipe changed)"),
                                    ("dpo", "kept", "before --from")]


def test_from_without_the_earlier_checkpoints_fails_naming_them(tiny, tmp_path, drivers, calls):
    run_dir = tmp_path / "run"
    with pytest.raises(P.PipelineError, match=r"--from: .*run/sft/checkpoint, which a later stage reads, is missing"):
        run_chain(tiny, run_dir, drivers, start="dpo")
    assert calls == []


def test_an_unknown_start_stage_is_refused(tiny, tmp_path, drivers):
    with pytest.raises(P.PipelineError, match="'ppo': not a stage of the chain"):
        run_chain(tiny, tmp_path / "run", drivers, start="ppo")


# --------------------------------------------------------------------------
# The Instruct chain starts from the Think SFT


def test_the_instruct_sft_starts_from_the_think_sft_checkpoint(tiny, tmp_path, drivers):
    run_chain(tiny, tmp_path / "think", drivers)
    base = P.think_sft_checkpoint(tmp_path / "think")
    assert base == tmp_path / "think" / "sft" / EXPORT_DIR
    run_chain(tiny, tmp_path / "instruct", drivers, variant="instruct", base=base)
    manifest = read_json(tmp_path / "instruct" / "sft" / EXPORT_DIR / MANIFEST)
    assert manifest["config"]["variant"] == "instruct"
    assert manifest["parent"] == {"path": str(base), "hash": read_json(base / MANIFEST)["content_hash"]}
    assert manifest["data_sources"].keys() == {str(tiny / f"data/sft_instruct/{s}.jsonl") for s in ("train", "heldout")}
    card = (tmp_path / "instruct" / "rlvr" / EXPORT_DIR / MODEL_CARD).read_text()
    assert "# Instruct model after think SFT -> instruct SFT -> instruct DPO -> instruct RLVR" in card  # the think SFT, then the instruct chain
    assert f"Base: `{tiny / 'base'}`" in card


def test_think_sft_checkpoint_refuses_a_missing_or_wrong_run(tiny, tmp_path, drivers):
    with pytest.raises(P.PipelineError, match="no complete Think SFT checkpoint; run the think chain first"):
        P.think_sft_checkpoint(tmp_path / "nothing")
    run_chain(tiny, tmp_path / "instruct", drivers, variant="instruct", base=tiny / "base")
    with pytest.raises(P.PipelineError, match="variant 'instruct'; the Instruct SFT starts from a think SFT"):
        P.think_sft_checkpoint(tmp_path / "instruct")


# --------------------------------------------------------------------------
# Recipes, overrides and relocation


def test_relocation_moves_paths_under_the_old_root_only():
    move = P.Relocation(Path("runs/tiny"), Path("/data/tiny"))
    assert move.apply("runs/tiny/data/rlvr/train.jsonl") == "/data/tiny/data/rlvr/train.jsonl"
    assert move.apply("runs/tiny") == "/data/tiny"
    assert move.apply("runs/tinyish/base") == "runs/tinyish/base"  # a path prefix, not a string prefix
    assert move.apply("allenai/Dolci-Think-SFT-7B") == "allenai/Dolci-Think-SFT-7B"
    assert move.apply("/runs/tiny/base") == "/runs/tiny/base"


def test_split_overrides_sends_plain_keys_to_every_stage_and_prefixed_ones_to_one():
    split = P.split_overrides(["seed=1", "dpo:dpo.beta=2", "rlvr:grpo.steps=3", "model.path=a:b"])
    assert split == {"sft": ["seed=1", "model.path=a:b"], "dpo": ["seed=1", "dpo.beta=2", "model.path=a:b"],
                     "rlvr": ["seed=1", "grpo.steps=3", "model.path=a:b"]}
    with pytest.raises(P.PipelineError, match="'ppo' is not a stage of the chain"):
        P.split_overrides(["ppo:optim.lr=1"])


def test_a_recipe_of_the_wrong_variant_or_stage_is_refused(tiny, tmp_path, drivers):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for stage in P.CHAIN:
        (recipes / f"{stage}.yaml").write_text((RECIPES / "instruct" / f"{stage}.yaml").read_text()
                                               .replace("base: ../", f"base: {RECIPES}/"))
    with pytest.raises(P.PipelineError, match=r"sft.yaml: a instruct recipe in a think chain"):
        P.run("think", recipes, None, tmp_path / "run", drivers=drivers)
    (recipes / "sft.yaml").write_text((RECIPES / "instruct" / "dpo.yaml").read_text().replace("base: ../", f"base: {RECIPES}/"))
    with pytest.raises(P.PipelineError, match=r"sft.yaml: this is a dpo recipe, the chain needs a sft recipe here"):
        P.run("instruct", recipes, None, tmp_path / "run", drivers=drivers)
    (recipes / "dpo.yaml").unlink()
    with pytest.raises(P.PipelineError, match=r"dpo.yaml: no dpo recipe"):
        P.stage_config("dpo", recipes, "instruct", (), (), None, tmp_path / "run" / "dpo")


def test_a_bad_override_fails_before_any_stage_runs(tiny, tmp_path, drivers, calls):
    with pytest.raises(P.PipelineError, match="unknown key 'optim.lrr'; did you mean 'optim.lr'"):
        run_chain(tiny, tmp_path / "run", drivers, overrides=("optim.lrr=1",))
    with pytest.raises(P.PipelineError, match="unknown key 'grpo.stepz'; did you mean 'grpo.steps'"):
        run_chain(tiny, tmp_path / "run", drivers, overrides=("rlvr:grpo.stepz=1",))  # the last stage's recipe
    assert calls == []


def test_a_missing_local_base_fails_with_a_hint(tmp_path, drivers, calls):
    with pytest.raises(P.PipelineError, match=r"sft: input checkpoint .*nowhere/base does not exist \(build the tiny"):
        P.run("think", RECIPES / "think", None, tmp_path / "run",
              relocations=(P.Relocation(P.TINY_ROOT, tmp_path / "nowhere"),), drivers=drivers)
    assert calls == []


def test_an_unregistered_stage_driver_is_named(tiny, tmp_path):
    partial: Registry = Registry("stage driver")
    partial.register("sft", FakeStage([]))
    with pytest.raises(UnknownNameError, match="unknown stage driver 'dpo'"):
        run_chain(tiny, tmp_path / "run", partial)


def test_the_real_drivers_are_registered_for_every_stage():
    assert P.DRIVERS.names() == sorted(P.CHAIN)
    assert all(isinstance(P.DRIVERS.get(stage), P.ModuleDriver) for stage in P.CHAIN)


# --------------------------------------------------------------------------
# The command


def test_the_command_runs_the_chain_through_the_registry(tiny, tmp_path, drivers, calls, monkeypatch, capsys):
    monkeypatch.setattr(P, "DRIVERS", drivers)
    run_dir = tmp_path / "run"
    argv = ["pipeline", "--variant", "think", "--tiny", str(tiny), "--run-dir", str(run_dir), "--eval-size", "0", "rlvr:grpo.steps=2"]
    assert main(argv) == 0
    assert calls == ["sft", "dpo", "rlvr"]
    assert capsys.readouterr().out.strip().endswith(f"think chain done: {run_dir / 'rlvr'}")
    instruct = ["pipeline", "--variant", "instruct", "--tiny", str(tiny), "--think-run", str(run_dir),
                "--run-dir", str(tmp_path / "instruct"), "--eval-size", "0"]
    assert main(instruct) == 0
    assert read_json(tmp_path / "instruct" / "sft" / MANIFEST)["parent"]["path"] == str(run_dir / "sft" / EXPORT_DIR)


def test_the_command_reports_pipeline_errors_with_exit_2(tiny, tmp_path, drivers, monkeypatch, capsys):
    monkeypatch.setattr(P, "DRIVERS", drivers)
    code = main(["pipeline", "--variant", "think", "--tiny", str(tiny), "--run-dir", str(tmp_path / "r"), "--from", "rlvr"])
    assert code == 2 and "pipeline: --from: " in capsys.readouterr().err
    code = main(["pipeline", "--variant", "think", "--think-run", str(tmp_path), "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "--think-run is for the instruct chain" in capsys.readouterr().err


# --------------------------------------------------------------------------
# A benchmark suite after each stage (--eval-suite)


def test_eval_suite_evaluates_each_stage_and_the_cards_and_report_show_its_table(tiny, tmp_path, drivers, monkeypatch,
                                                                                  capsys):
    """The suite runs on each checkpoint right after its stage, into RUN_DIR/<stage>/eval/<suite>/ (a stand-in
    evaluation here: the fake checkpoints hold no model); cards and report show the table, released numbers beside."""
    from posttrain.eval import results as R
    from posttrain.eval.runner import released_stage
    from posttrain.eval.tasks import get_suite
    from posttrain.report import write_report

    seen = []

    def fake_run(self, checkpoint, out_dir):
        seen.append((Path(checkpoint), Path(out_dir), self.limit, self.overrides, sorted(p.name for p in tmp_path.joinpath("run").iterdir())))
        run = {"checkpoint": str(checkpoint), "checkpoint_hash": checkpoint_hash(checkpoint), "suite": self.suite,
               "variant": "think", "stage": released_stage(Path(checkpoint), None)}
        record = {"n": 2, "samples": 1, "primary": "pass@1", "unscored": 0,
                  "metrics": {"pass@1": {"value": 0.5, "stderr": 0.5, "n": 2}}}
        return R.write_all(Path(out_dir), run, {"humanevalplus": record}, get_suite(self.suite))

    monkeypatch.setattr(P.SuiteEval, "run", fake_run)
    monkeypatch.setattr(P, "DRIVERS", drivers)
    run_dir = tmp_path / "run"
    argv = ["pipeline", "--variant", "think", "--tiny", str(tiny), "--run-dir", str(run_dir), "--eval-size", "0",
            "--eval-suite", "olmo3-think", "--eval-tasks", "humanevalplus", "--eval-limit", "2",
            "eval:sampling.n=1", "eval:metrics=[pass@1]", "rlvr:grpo.steps=2"]
    assert main(argv) == 0
    assert [(c, o, limit, overrides) for c, o, limit, overrides, _ in seen] == [
        (run_dir / s / EXPORT_DIR, run_dir / s / "eval" / "olmo3-think", 2, ("sampling.n=1", "metrics=[pass@1]"))
        for s in P.CHAIN]
    assert seen[0][4] == ["sft"]  # right after its stage: the next stage had not run yet
    released = {"sft": "88.2", "dpo": "91.4", "rlvr": "89.9"}  # humanevalplus, Olmo 3 Think SFT / DPO / final
    for stage, number in released.items():
        card = (run_dir / stage / EXPORT_DIR / MODEL_CARD).read_text()
        assert "## Benchmarks" in card and f"| humanevalplus | 2 | pass@1 | 50.0 ± 50.0 | {number} |" in card
    report = write_report(run_dir).markdown.read_text()
    assert "Benchmark suites after each stage" in report and "olmo3-think after RLVR (final)" in report
    assert "| humanevalplus | 2 | pass@1 | 50.0 ± 50.0 | 89.9 |" in report
    assert read_json(run_dir / P.PIPELINE_FILE)["eval_suite"]["suite"] == "olmo3-think"
    # an unknown suite fails before any stage runs
    assert main(["pipeline", "--variant", "think", "--tiny", str(tiny), "--run-dir", str(tmp_path / "r2"),
                 "--eval-suite", "olmo3-thinking"]) == 2
    assert "olmo3-instruct, olmo3-think" in capsys.readouterr().err and not (tmp_path / "r2").exists()
