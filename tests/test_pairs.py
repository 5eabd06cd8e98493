"""The delta-learning pair builder: verifier filtering, length filter, resume, the CLI, both engines."""

from __future__ import annotations

import json
import os

import pytest

from posttrain.pairs import PairsOptions, build_pairs, choose, read_jsonl

MATH_ROW = {"messages": [{"role": "user", "content": "What is 2 plus 3?"}], "verifier": "math", "ground_truth": "5"}


def sample(text: str, finish: str = "stop") -> dict:
    return {"text": text, "finish_reason": finish}


def options(tmp_path, **kw) -> PairsOptions:
    base = dict(chosen_model="A", rejected_model="B", prompts="P", out=str(tmp_path / "out.jsonl"), progress=False)
    return PairsOptions(**{**base, **kw})


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize(
    "chosen, rejected, kw, expected",
    [
        ([sample("\\boxed{5}")], [sample("\\boxed{6}")], {}, ("\\boxed{5}", "\\boxed{6}")),
        # the first passing chosen sample and the first failing rejected sample
        ([sample("\\boxed{4}"), sample("so \\boxed{5}")], [sample("\\boxed{5}"), sample("\\boxed{7}")], {},
         ("so \\boxed{5}", "\\boxed{7}")),
        ([sample("\\boxed{4}")], [sample("\\boxed{6}")], {}, "chosen_failed_verifier"),
        ([sample("\\boxed{5}")], [sample("it is \\boxed{5}")], {}, "rejected_passed_verifier"),
        ([sample("\\boxed{5}", "length")], [sample("\\boxed{6}")], {}, "chosen_truncated"),
        # lengths: a pair within the limit is searched for among the samples
        ([sample("\\boxed{5}")], [sample("a b c d e f \\boxed{6}"), sample("x \\boxed{6}")], {"max_length_diff": 1},
         ("\\boxed{5}", "x \\boxed{6}")),
        ([sample("\\boxed{5}")], [sample("a b c d e f \\boxed{6}")], {"max_length_diff": 1}, "length_diff"),
    ],
)
def test_choose_with_a_verifier(tmp_path, chosen, rejected, kw, expected):
    pair, reason = choose(MATH_ROW, chosen, rejected, options(tmp_path, **kw), words)
    if isinstance(expected, tuple):
        assert (pair, reason) == (expected, "kept")
    else:
        assert (pair, reason) == (None, expected)


def test_choose_without_a_verifier_needs_different_answers(tmp_path):
    row = {"messages": MATH_ROW["messages"]}
    assert choose(row, [sample("same")], [sample("same ")], options(tmp_path), words) == (None, "identical")
    assert choose(row, [sample("good")], [sample("bad")], options(tmp_path), words) == (("good", "bad"), "kept")


# --------------------------------------------------------------------------- with real models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two random tiny Olmo 3 checkpoints (head_dim 64, as vLLM-CPU needs) sharing one tokenizer."""
    import torch
    from transformers import Olmo3ForCausalLM

    from posttrain.tiny.model import generation_config, tiny_config
    from posttrain.tiny.tokenizer import train_tokenizer

    corpus = [f"What is {i} plus {j}? The answer is {i + j}." for i in range(20) for j in range(5)]
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
        config.num_hidden_layers, config.layer_types = 2, ["full_attention"] * 2
        model = Olmo3ForCausalLM(config)
        model.generation_config = generation_config(tokenizer.eos_token_id, tokenizer.pad_token_id)
        path = tmp_path_factory.mktemp(f"model{seed}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def write_prompts(path, n: int, verifier_every: int = 0) -> str:
    rows = []
    for i in range(n):
        row = {"id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} plus 2?"}]}
        if verifier_every and i % verifier_every == 0:
            row.update(verifier="math", ground_truth=str(i + 2))
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_build_resume_and_refilter_with_the_hf_engine(tmp_path, models):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6, verifier_every=3)
    opts = options(tmp_path, chosen_model=models[0], rejected_model=models[1], prompts=prompts, engine="hf",
                   samples=2, max_tokens=12, chunk_size=2, temperature=1.0, top_p=1.0)
    report = build_pairs(opts)
    assert report.prompts == 6 and report.generated == {"chosen": 6, "rejected": 6}
    # random models never solve the verified prompts; the 4 unverified ones pair unless both answers are equal
    assert report.dropped.get("chosen_failed_verifier", 0) + report.dropped.get("chosen_truncated", 0) >= 2
    assert report.kept + sum(report.dropped.values()) == 6
    pairs = read_jsonl(tmp_path / "out.jsonl")
    assert len(pairs) == report.kept and all(p["prompt_id"] in {"p1", "p2", "p4", "p5"} for p in pairs)
    for pair in pairs:
        prompt = [{"role": "user", "content": f"What is {pair['prompt_id'][1:]} plus 2?"}]
        assert pair["chosen"][:-1] == pair["rejected"][:-1] == prompt
        assert pair["chosen"][-1]["role"] == "assistant"
        assert pair["chosen"][-1]["content"] != pair["rejected"][-1]["content"]

    # a run killed while appending: two prompts done and a torn line
    parts = tmp_path / "out.jsonl.parts"
    lines = (parts / "chosen.jsonl").read_text().splitlines()
    (parts / "chosen.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:10])
    os.remove(tmp_path / "out.jsonl")
    again = build_pairs(opts)
    assert again.generated == {"chosen": 4, "rejected": 0}  # only the missing prompts are generated again
    assert len(read_jsonl(parts / "chosen.jsonl")) == 6 and (tmp_path / "out.jsonl").is_file()

    # other pairing options reuse the samples; other generation settings refuse to mix them
    strict = build_pairs(options(tmp_path, **{**opts.__dict__, "max_length_diff": 0}))
    assert strict.generated == {"chosen": 0, "rejected": 0} and strict.kept <= again.kept
    with pytest.raises(ValueError, match="other settings \\(temperature\\)"):
        build_pairs(options(tmp_path, **{**opts.__dict__, "temperature": 0.5}))


def test_cli_names_a_bad_prompt_row(tmp_path, models, capsys):
    from posttrain.cli import main

    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "x"}], "verifier": "math"}) + "\n")
    code = main(["pairs", "--chosen-model", models[0], "--rejected-model", models[1], "--prompts", str(bad),
                 "--out", str(tmp_path / "o.jsonl"), "--engine", "hf"])
    assert code == 2 and "prompts.jsonl:2: ground_truth: missing" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_vllm_cpu(tmp_path, models):
    """`posttrain pairs` end to end with the vLLM engine (the CPU build here), in its own process."""
    import subprocess
    import sys

    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    out = tmp_path / "pairs.jsonl"
    command = [sys.executable, "-m", "posttrain", "pairs", "--chosen-model", models[0], "--rejected-model", models[1],
               "--prompts", prompts, "--out", str(out), "--engine", "vllm", "--max-tokens", "8",
               "--max-prompt-length", "64", "--kv-cache-gib", "1",
               "--gpu-memory-utilization", "0.1", "--temperature", "1.0", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert report["generated"] == {"chosen": 4, "rejected": 4}
    assert report["kept"] + sum(report["dropped"].values()) == 4 and len(read_jsonl(out)) == report["kept"]
