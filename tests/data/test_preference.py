"""Preference pairs: bad-input policies, shared prompt tokens, response-only labels, length rules, batches."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.config import DataSection, DatasetSpec, DPOSection
from posttrain.data.batches import IGNORE_INDEX
from posttrain.data.chat import tokenize_conversation
from posttrain.data.preference import (
    BAD_PAIR,
    collate,
    concatenated,
    fingerprint,
    load_pairs,
    pair_problem,
    read_pairs,
    tokenize_pairs,
)
from posttrain.data.sources import DataError
from posttrain.tiny.tokenizer import train_tokenizer

PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]


def conv(answer: str, prompt=PROMPT) -> list[dict]:
    return [*prompt, {"role": "assistant", "content": answer}]


def good_row(n: int = 0) -> dict:
    prompt = [{"role": "user", "content": f"What is {n} plus 3?"}]
    return {"chosen": conv(f"The answer is \\boxed{{{n + 3}}}.", prompt),
            "rejected": conv(f"The answer is {n + 4}.", prompt)}


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"What is {i} plus 3? The answer is \\boxed{{{i + 3}}}. I add {i} and 3." for i in range(50)] * 4
    return train_tokenizer(corpus, vocab_size=400)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sections(path: str, on_bad_row="error", on_bad_pair="error", **dpo) -> tuple[DataSection, DPOSection]:
    spec = [DatasetSpec(path=path)]
    data = DataSection(train=spec, heldout=spec, on_bad_row=on_bad_row, shuffle=False)
    return data, DPOSection(on_bad_pair=on_bad_pair, **dpo)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"rejected": conv("no")}, "bad pair: chosen: missing"),
        ({"chosen": conv("yes"), "rejected": []}, "bad pair: rejected: missing"),
        ({"chosen": conv("same"), "rejected": conv("same")}, "identical"),
        ({"chosen": conv("yes"), "rejected": conv("no", [{"role": "user", "content": "Other?"}])},
         "prompt turns differ"),
        ({"chosen": conv("yes"), "rejected": conv("   ")}, "bad pair: rejected[1].content: empty final answer"),
        ({"chosen": conv("yes"), "rejected": [*PROMPT, {"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    ],
)
def test_pair_problem_names_the_field(row, expected):
    problem = pair_problem(row)
    assert problem is not None and expected in problem
    # only the role error is a malformed row; the rest are pair problems under dpo.on_bad_pair
    assert problem.startswith(BAD_PAIR) == ("bot" not in expected)


def test_identical_means_the_rendered_answer_think_block_included():
    chosen = conv("ans") + []
    chosen[-1] = {"role": "assistant", "content": "ans", "reasoning_content": "because"}
    assert pair_problem({"chosen": chosen, "rejected": conv("ans")}) is None
    assert pair_problem(good_row()) is None


def test_bad_pair_error_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [good_row(1), good_row(2), {"chosen": conv("a"), "rejected": conv("a")}])
    data, dpo = sections(path, on_bad_row="skip", on_bad_pair="error")
    with pytest.raises(DataError, match=r"p\.jsonl:3: bad pair: rejected: the final answer is identical"):
        read_pairs(data, dpo)


def test_bad_pairs_and_malformed_rows_are_counted_separately(tmp_path):
    rows = [
        good_row(1),
        {"chosen": conv("a"), "rejected": conv("a")},  # identical
        {"chosen": conv("a")},  # missing side
        good_row(2),
        {"chosen": conv("a"), "rejected": [*PROMPT, {"role": "bot", "content": "x"}]},  # malformed
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data, dpo = sections(path, on_bad_row="skip", on_bad_pair="skip")
    kept, report = read_pairs(data, dpo)
    assert len(kept) == 2 and report.read == 5
    assert (report.bad_pairs_skipped, report.malformed_skipped) == (2, 1)
    assert any("p.jsonl:2" in e for e in report.examples)
    # malformed rows still fail under data.on_bad_row=error while bad pairs are skipped
    data, dpo = sections(path, on_bad_row="error", on_bad_pair="skip")
    with pytest.raises(DataError, match=r"p\.jsonl:5: rejected\[1\]\.role: unknown role"):
        read_pairs(data, dpo)


# --------------------------------------------------------------------------- tokenization


def test_prompt_is_shared_and_labels_cover_the_final_response_only(tokenizer):
    earlier = [{"role": "system", "content": "Be brief."}, *PROMPT, {"role": "assistant", "content": "5"},
               {"role": "user", "content": "And 2 plus 4?"}]
    row = {"chosen": conv("The answer is \\boxed{6}.", earlier), "rejected": conv("The answer is 7.", earlier)}
    (pair,), report = tokenize_pairs(tokenizer, [row], max_length=512)
    assert report.kept == 1
    for side in ("chosen", "rejected"):
        full = tokenize_conversation(tokenizer, row[side])
        response = getattr(pair, side)
        # separate tokenization of prompt and response gives the conversation's own tokens
        assert list(pair.prompt) + list(response) == full["input_ids"][: len(pair.prompt) + len(response)]
        # the response is exactly the last assistant turn's labelled tokens (content + <|im_end|>)
        last_turn = [t for t in full["labels"][len(pair.prompt):] if t != IGNORE_INDEX]
        assert list(response) == last_turn
        assert tokenizer.decode(response).endswith("<|im_end|>")
    batch = collate([pair], [0], pad_id=tokenizer.pad_token_id)
    n_prompt = len(pair.prompt)
    assert (batch.chosen_labels[0, :n_prompt] == IGNORE_INDEX).all()
    assert batch.chosen_labels[0, n_prompt:].tolist() == list(pair.chosen)
    assert batch.chosen_input_ids[0, :n_prompt].tolist() == batch.rejected_input_ids[0, :n_prompt].tolist()


def test_length_difference_and_overlong_rules(tokenizer):
    short = {"chosen": conv("5"), "rejected": conv("The answer is 5 because I add 2 and 3 and 2 plus 3 is 5.")}
    rows = [good_row(1), short]
    pairs, report = tokenize_pairs(tokenizer, rows, max_length=512, max_length_diff=5)
    assert len(pairs) == 1 and report.length_diff_dropped == 1
    longest = max(len(p) for p in tokenize_pairs(tokenizer, rows, max_length=512)[0])
    prompt_len = len(tokenize_pairs(tokenizer, rows, max_length=512)[0][0].prompt)
    limit = prompt_len + 4
    dropped, report = tokenize_pairs(tokenizer, rows, max_length=limit, overlong="drop")
    assert dropped == [] and report.overlong_dropped == 2 and longest > limit
    cut, report = tokenize_pairs(tokenizer, rows, max_length=limit, overlong="truncate")
    assert report.overlong_truncated == 2 and all(len(p) == limit for p in cut)
    none, report = tokenize_pairs(tokenizer, rows, max_length=prompt_len, overlong="truncate")
    assert none == [] and report.overlong_dropped == 2  # no room left for any response token


def test_load_pairs_and_fingerprint(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [good_row(i) for i in range(6)])
    data, dpo = sections(path)
    pairs, report = load_pairs(tokenizer, data, dpo)
    assert report.kept == 6 and report.read == 6
    again, _ = load_pairs(tokenizer, data, dpo)
    assert fingerprint(pairs) == fingerprint(again)
    assert fingerprint(pairs) != fingerprint(pairs[::-1])
    assert fingerprint(pairs) != fingerprint(pairs[:5])


def test_collate_pads_and_concatenates(tokenizer):
    rows = [good_row(1), {"chosen": conv("The answer is \\boxed{4}."), "rejected": conv("4 4 4 4 4 4 4 4 4")}]
    pairs, _ = tokenize_pairs(tokenizer, rows, max_length=512)
    ref = (torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]))
    batch = collate(pairs, [1, 0], pad_id=tokenizer.pad_token_id, ref_logps=ref)
    assert batch.example_index.tolist() == [1, 0]
    assert batch.ref_chosen_logps.tolist() == [-2.0, -1.0] and batch.ref_rejected_logps.tolist() == [-4.0, -3.0]
    assert batch.chosen_lengths.tolist() == [len(pairs[1].chosen), len(pairs[0].chosen)]
    assert batch.chosen_attention_mask.sum(1).tolist() == [len(pairs[i].prompt) + len(pairs[i].chosen) for i in (1, 0)]
    both = concatenated(batch, pad_id=tokenizer.pad_token_id)
    width = max(batch.chosen_input_ids.shape[1], batch.rejected_input_ids.shape[1])
    assert both["input_ids"].shape == (4, width)
    assert ((both["labels"] != IGNORE_INDEX).sum(1)[:2] == batch.chosen_lengths).all()
    assert ((both["labels"] != IGNORE_INDEX).sum(1)[2:] == batch.rejected_lengths).all()
