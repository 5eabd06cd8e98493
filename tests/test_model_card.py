"""Model cards and lineage: from manifests (and the chain's eval.json) to README.md in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, MODEL_CARD, atomic_dir, build_manifest, finalize_export, read_json, write_json_atomic
from posttrain.eval.heldout import EVAL_FILE
from posttrain.lineage import ancestry
from posttrain.model_card import render, write_model_card


def export(out: Path, stage: str, variant: str, parent: Path, metrics: dict) -> Path:
    config = {"stage": stage, "variant": variant, "optim": {"lr": 3e-4}, "dpo": {"beta": 5.0}} if stage == "dpo" else \
        {"stage": stage, "variant": variant, "optim": {"lr": 3e-4}}
    manifest = build_manifest(stage=stage, config=config, config_hash=f"{stage}-{variant}", parent=parent,
                              metrics=metrics, wall_time_s=12.0)
    with atomic_dir(out / EXPORT_DIR) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(f"{stage}{variant}".encode())
        finalize_export(tmp, manifest)
    return out / EXPORT_DIR


@pytest.fixture
def lineage_dirs(tmp_path) -> dict[str, Path]:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    think_sft = export(tmp_path / "think" / "sft", "sft", "think", base, {"heldout_loss": 1.5, "steps": 10})
    sft = export(tmp_path / "instruct" / "sft", "sft", "instruct", think_sft, {"heldout_loss": 1.2, "steps": 8})
    dpo = export(tmp_path / "instruct" / "dpo", "dpo", "instruct", sft, {"heldout_pref_acc": 0.9, "steps": 5})
    return {"base": base, "think_sft": think_sft, "sft": sft, "dpo": dpo}


def test_ancestry_follows_parents_back_to_the_base(lineage_dirs):
    found = ancestry(lineage_dirs["dpo"])
    assert [(s.stage, s.variant) for s in found.steps] == [("sft", "think"), ("sft", "instruct"), ("dpo", "instruct")]
    assert found.root["path"] == str(lineage_dirs["base"])
    assert ancestry(lineage_dirs["base"]).steps == ()  # no manifest: nothing to follow


def test_the_card_names_lineage_metrics_recipes_and_how_to_load(lineage_dirs):
    card = render(lineage_dirs["dpo"])
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "# Instruct model after think SFT -> instruct SFT -> instruct DPO" in card
    for name in ("think_sft", "sft", "dpo"):
        assert read_json(lineage_dirs[name] / MANIFEST)["content_hash"] in card
    assert f"`{lineage_dirs['think_sft']}`" in card  # the instruct SFT's input
    assert "| heldout_pref_acc |  |  | 0.9 |" in card
    assert "- **instruct DPO** (recipe hash dpo-instruct): optim.lr=0.0003, dpo.beta=5" in card
    assert f'AutoModelForCausalLM.from_pretrained("{lineage_dirs["dpo"]}")' in card and "LLM(model=" in card


def test_the_card_shows_the_held_out_suite_of_its_chain(lineage_dirs):
    run_dir = lineage_dirs["dpo"].parent.parent
    results = {stage: {"checkpoint_hash": read_json(lineage_dirs[stage] / MANIFEST)["content_hash"],
                       "metrics": {"pass@1": value, "format": 0.5}} for stage, value in (("sft", 0.25), ("dpo", 0.5))}
    results["input"] = {"checkpoint_hash": "not-in-this-lineage", "metrics": {"pass@1": 0.0}}
    write_json_atomic(run_dir / EVAL_FILE, {"results": results})
    card = write_model_card(lineage_dirs["dpo"]).read_text()
    assert "| metric | instruct SFT | instruct DPO |\n|---|---|---|\n| pass@1, all verifiers | 0.25 | 0.5 |" in card
    assert (lineage_dirs["dpo"] / MODEL_CARD).is_file()
    assert not any(p.name.startswith(".") for p in lineage_dirs["dpo"].iterdir())  # no temporary left


def test_a_checkpoint_without_manifest_has_no_card(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        render(tmp_path)
