"""The held-out suite on a real tiny checkpoint: what it measures, its fingerprint, its cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.eval import heldout as E
from posttrain.checkpoints import read_json
from posttrain import pipeline as P

REPO = Path(__file__).resolve().parents[2]


def configs(tiny_dir: Path, variant: str = "think") -> dict:
    relocations = (P.Relocation(P.TINY_ROOT, tiny_dir),)
    return {stage: P.stage_config(stage, REPO / "recipes" / "tiny" / variant, variant, (), relocations, None,
                                  tiny_dir / "unused" / stage) for stage in P.CHAIN}


def test_the_suite_takes_the_first_rows_of_the_recipes_held_out_data(tiny_dir):
    c = configs(tiny_dir)
    suite = E.build_suite("think", c["rlvr"], c["dpo"], 6)
    assert len(suite.prompt_rows) == 6 and suite.size == 6
    assert {row["verifier"] for row in E.build_suite("think", c["rlvr"], c["dpo"], 400).prompt_rows} >= {"math", "ifeval"}
    assert suite.max_tokens == c["rlvr"].rollout.max_response_length
    assert suite.key == E.build_suite("think", c["rlvr"], c["dpo"], 6).key
    assert suite.key != E.build_suite("think", c["rlvr"], c["dpo"], 7).key
    instruct = configs(tiny_dir, "instruct")
    assert suite.key != E.build_suite("instruct", instruct["rlvr"], instruct["dpo"], 6).key


@pytest.mark.slow
def test_the_base_model_is_scored_and_the_result_cached(tiny_dir, tmp_path, capsys):
    c = configs(tiny_dir)
    suite = E.build_suite("think", c["rlvr"], c["dpo"], 8)
    first = E.evaluate_chain(tmp_path, {"input": tiny_dir / "base"}, suite)
    metrics = first["results"]["input"]["metrics"]
    assert {"pass@1", "pass@1/math", "pass@1/ifeval", "format", "pref_acc", "response_tokens", "truncated"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("pass@1", "format", "pref_acc", "truncated"))
    assert 0 < metrics["response_tokens"] <= suite.max_tokens and metrics["pairs"] == 8
    assert first["suite"] == {"key": suite.key, "variant": "think", "size": 8, "prompts": 8, "pairs": 8,
                              "max_tokens": suite.max_tokens}
    assert "[eval think input]" in capsys.readouterr().out
    again = E.evaluate_chain(tmp_path, {"input": tiny_dir / "base"}, suite)
    assert again == first == read_json(tmp_path / E.EVAL_FILE)
    assert capsys.readouterr().out == ""  # same checkpoint, same suite: not evaluated again


def test_a_row_of_several_verifiers_passes_only_when_every_one_does():
    from posttrain.data.rlvr import Group, Prompt
    from posttrain.eval.heldout import summarize

    spec = [{"name": "math", "label": "42"}, {"name": "ifeval", "label": "{}"}]
    group = Group(prompt=Prompt(0, [1], spec, None), response_ids=[[1]] * 3, engine_logprobs=[[0.0]] * 3,
                  truncated=[False] * 3, version=0, rewards=[2.0, 1.0, 0.0])
    out = summarize([group])
    assert out["eval/pass@1"] == pytest.approx(1 / 3) and out["eval/score"] == pytest.approx(0.5)
