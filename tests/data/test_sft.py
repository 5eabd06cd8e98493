"""SFT stage pieces: bad input, overlong policy, loss masks, packing through the stage's data path, step plans.

A micro tokenizer and model (built here in seconds) stand in for the tiny
default; the stage end to end on the tiny model is tests/e2e/test_sft_e2e.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Olmo3Config, Olmo3ForCausalLM

from posttrain.algorithms.losses import sft_token_loss
from posttrain.config import validate
from posttrain.data.batches import IGNORE_INDEX
from posttrain.data.chat import think_content
from posttrain.data.sources import DataError
from posttrain.data import sft as D
from posttrain.data.step_plan import check_resumable
from posttrain.tiny.tokenizer import train_tokenizer


def chat(question: str, answer: str, *, earlier: tuple[str, str] | None = None, system: str | None = None):
    messages = [{"role": "system", "content": system}] if system else []
    if earlier:
        messages += [{"role": "user", "content": earlier[0]}, {"role": "assistant", "content": earlier[1]}]
    return {"messages": messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


GOOD = [chat(f"What is {a} plus {b}?", think_content(f"{a} + {b} = {a + b}", f"So \\boxed{{{a + b}}}."))
        for a in range(6) for b in range(5)]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [json.dumps(row) for row in GOOD] * 4 + ["say hi hello there a long answer " * 5]
    return train_tokenizer(corpus, vocab_size=320)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = Olmo3Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
                         layer_types=["full_attention"] * 2, sliding_window=512, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return Olmo3ForCausalLM(config).eval()


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def recipe(train_path: str, **data) -> object:
    raw = {"stage": "sft", "model": {"path": "unused"}, "output": {"dir": "unused"}, "optim": {"lr": 1e-3},
           "batch": {"tokens": 1024, "micro_batch_size": 2},
           "data": {"train": [{"path": train_path}], "max_length": 512, **data}}
    return validate(raw)


# ---------------------------------------------------------------- bad input


BAD = [
    {"messages": [{"role": "user", "content": "no answer here"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "   "}]},
]


def test_a_bad_row_fails_naming_file_line_and_field(tmp_path, tokenizer):
    path = write(tmp_path / "train.jsonl", [GOOD[0], BAD[0]])
    with pytest.raises(DataError, match=r"train.jsonl:2: messages: no assistant turn"):
        D.load_split(recipe(path), tokenizer, "train")
    path = write(tmp_path / "train.jsonl", [GOOD[0], GOOD[1], BAD[1]])
    with pytest.raises(DataError, match=r"train.jsonl:3: messages\[1\].role: unknown role 'bot'"):
        D.load_split(recipe(path), tokenizer, "train")
    path = write(tmp_path / "train.jsonl", [BAD[2]])
    with pytest.raises(DataError, match=r"train.jsonl:1: messages\[1\].content: empty"):
        D.load_split(recipe(path), tokenizer, "train")


def test_bad_rows_are_skipped_and_counted_when_the_recipe_says_so(tmp_path, tokenizer):
    path = write(tmp_path / "train.jsonl", [GOOD[0], *BAD, GOOD[1]])
    examples, report = D.load_split(recipe(path, on_bad_row="skip"), tokenizer, "train")
    assert len(examples) == report.examples == 2
    assert report.skipped_bad_rows == 3 and len(report.bad_row_examples) == 3
    assert "no assistant turn" in report.bad_row_examples[0]


def test_overlong_rows_are_dropped_or_truncated_and_counted(tmp_path, tokenizer):
    long = chat("Tell me more.", "hello there " * 60)
    late = chat("hi " * 80, "ok")  # the answer starts beyond max_length
    path = write(tmp_path / "train.jsonl", [GOOD[0], long, late])
    dropped, report = D.load_split(recipe(path, max_length=64, overlong="drop"), tokenizer, "train")
    assert (len(dropped), report.overlong_dropped, report.overlong_truncated) == (1, 2, 0)
    kept, report = D.load_split(recipe(path, max_length=64, overlong="truncate"), tokenizer, "train")
    assert (len(kept), report.overlong_truncated, report.no_target_dropped) == (2, 2, 1)
    assert max(len(e["input_ids"]) for e in kept) == 64
    assert all(len(e["input_ids"]) == len(e["labels"]) for e in kept)


# ---------------------------------------------------------------- loss masks


def _target_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def test_loss_covers_every_assistant_turn_and_nothing_else(tokenizer):
    row = chat("What is 1 plus 1?", "It is 2.", earlier=("Say hi.", "hi hello"), system="Be brief.")
    example = D.tokenize_row(tokenizer, row["messages"], train_on_think=True)
    assert _target_text(tokenizer, example) == "hi hello<|im_end|>It is 2.<|im_end|>"


def test_the_think_block_is_trained_unless_switched_off(tokenizer):
    messages = GOOD[7]["messages"]
    with_think = _target_text(tokenizer, D.tokenize_row(tokenizer, messages, train_on_think=True))
    without = _target_text(tokenizer, D.tokenize_row(tokenizer, messages, train_on_think=False))
    assert with_think == messages[-1]["content"] + "<|im_end|>"
    assert with_think.startswith("<think>")
    assert without == messages[-1]["content"].split("</think>", 1)[1] + "<|im_end|>"


# ---------------------------------------------------------------- packing


def test_packed_per_token_losses_equal_unpacked(tmp_path, tokenizer, model):
    """Through the stage's own path (load_split -> to_rows -> collate), packing changes no token's loss."""
    rows = GOOD[:12] + [chat("Say hi.", "hi " * (3 + i), earlier=("Hello?", "hello")) for i in range(4)]
    examples, _ = D.load_split(recipe(write(tmp_path / "train.jsonl", rows)), tokenizer, "train")
    packed_rows = D.to_rows(examples, 160, packing=True)
    assert len(packed_rows) < len(examples)  # several documents share a row
    assert any(len(row.document_lengths) >= 3 for row in packed_rows)

    def losses(batch):
        with torch.no_grad():
            logits = model(**batch.model_inputs(), use_cache=False).logits
        loss, mask = sft_token_loss(logits, batch.labels)
        return loss, mask

    packed_loss, packed_mask = losses(D.collate(packed_rows, tokenizer.pad_token_id))
    single_rows = D.to_rows(examples, 160, packing=False)
    single_loss, single_mask = losses(D.collate(single_rows, tokenizer.pad_token_id))
    compared = 0
    for r, row in enumerate(packed_rows):
        start = 0
        for index, length in zip(row.example_indices, row.document_lengths):
            got, got_mask = packed_loss[r, start:start + length], packed_mask[r, start:start + length]
            want, want_mask = single_loss[index, :length], single_mask[index, :length]
            assert torch.equal(got_mask, want_mask)
            torch.testing.assert_close(got[got_mask], want[want_mask], atol=1e-4, rtol=0)
            compared += int(want_mask.sum())
            start += length
    assert compared == sum(int(m.sum()) for m in single_mask)


# ---------------------------------------------------------------- step plans


def test_each_epoch_sees_every_row_once_in_a_new_order():
    plan = D.StepPlan(num_rows=23, rows_per_step=5, micro_batch_size=2, world_size=1, epochs=2, seed=3)
    assert (plan.steps_per_epoch, plan.total_steps) == (5, 10)
    for epoch in range(2):
        seen = [i for s in range(epoch * 5, epoch * 5 + 5) for i in plan.step_rows(s)]
        assert sorted(seen) == list(range(23))
    assert plan.order(0) != plan.order(1)
    again = D.StepPlan(num_rows=23, rows_per_step=5, micro_batch_size=2, world_size=1, epochs=2, seed=3)
    assert [again.step_rows(s) for s in range(10)] == [plan.step_rows(s) for s in range(10)]


def test_ranks_split_the_same_rows_and_run_the_same_number_of_micro_batches():
    one = D.StepPlan(num_rows=23, rows_per_step=5, micro_batch_size=2, world_size=1, epochs=1, seed=0)
    two = D.StepPlan(num_rows=23, rows_per_step=5, micro_batch_size=2, world_size=2, epochs=1, seed=0)
    for step in range(one.total_steps):
        parts = two.rank_micro_batches(step)
        assert len(parts[0]) == len(parts[1])
        assert sorted(i for rank in parts for mb in rank for i in mb) == sorted(one.step_rows(step))
    rows = two.step_rows(4)  # the last step holds 3 rows: 2 for rank 0, 1 for rank 1
    assert two.rank_micro_batches(4) == [[[rows[0], rows[2]]], [[rows[1]]]]
    short = D.StepPlan(num_rows=21, rows_per_step=5, micro_batch_size=2, world_size=2, epochs=1, seed=0)
    assert short.rank_micro_batches(4) == [[short.step_rows(4)], [[]]]  # rank 1 idles with an empty micro-batch


def test_batch_in_tokens_derives_rows_and_accumulation(tmp_path):
    config = recipe(str(tmp_path / "x.jsonl"), max_length=512)
    assert D.rows_per_step(config) == 2  # 1024 tokens / 512
    config.batch.tokens = 1_000_000
    config.data.max_length = 32768
    assert D.rows_per_step(config) == 31  # Olmo 3: 1M tokens of 32K rows
    plan = D.StepPlan(num_rows=1000, rows_per_step=31, micro_batch_size=1, world_size=8, epochs=2, seed=0)
    assert plan.accumulation == 4
    assert D.StepPlan(num_rows=10, rows_per_step=3, micro_batch_size=1, world_size=1, epochs=0.5, seed=0).total_steps == 2
    assert D.StepPlan(num_rows=10, rows_per_step=3, micro_batch_size=1, world_size=1, epochs=3, seed=0,
                      max_steps=5).total_steps == 5


def test_an_idle_rank_gets_an_empty_micro_batch_without_loss(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}]
    plan = D.StepPlan(num_rows=1, rows_per_step=1, micro_batch_size=1, world_size=2, epochs=1, seed=0)
    batches = D.step_batches(plan, rows, 0, tokenizer.pad_token_id)
    assert batches[0][0].num_loss_tokens == 2
    assert batches[1][0].num_loss_tokens == 0 and batches[1][0].input_ids.shape == (1, 1)
    counts = D.batch_token_counts([b for rank in batches for b in rank])
    assert counts == {"real": 3, "total": 3, "loss": 2}


def test_resume_refuses_other_data_or_another_plan():
    plan = D.StepPlan(num_rows=10, rows_per_step=2, micro_batch_size=1, world_size=1, epochs=1, seed=0)
    check_resumable({"data_fingerprint": "abc", "plan": plan.summary()}, plan, "abc")
    with pytest.raises(RuntimeError, match="training data differ"):
        check_resumable({"data_fingerprint": "xyz", "plan": plan.summary()}, plan, "abc")
    with pytest.raises(RuntimeError, match="step plan differs"):
        check_resumable({"data_fingerprint": "abc", "plan": {**plan.summary(), "world_size": 2}}, plan, "abc")
