"""The released Olmo 3 RL and DPO rows load as they are (posttrain/data/released.py).

Rows are written by hand in the released column names and types (Dolci-Think-RL-7B, Dolci-Instruct-RL,
Dolci-Think-DPO-7B, Dolci-Instruct-DPO), as JSON lines and as Parquet, and read through `read_source` / `mix` with
the stage adapters, then as far as prompts and pairs.
"""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest

import rewards
from posttrain.config import DataSection, DatasetSpec, DPOSection, validate
from posttrain.data.mixing import mix
from posttrain.data.preference import pair_problem, read_pairs
from posttrain.data.released import ADAPTERS, dpo_adapter, rlvr_adapter
from posttrain.data.rlvr import encode_prompts, load_prompts, verifier_name
from posttrain.data.schemas import rlvr_row_validator
from posttrain.data.sources import DataError, read_source
from posttrain.tiny.tokenizer import train_tokenizer

TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
ENCODED = base64.b64encode(zlib.compress(pickle.dumps(TESTS))).decode()  # how the released code ground truth is stored
IFEVAL = json.dumps({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
VERIFIERS = rewards.names()


def think_rl() -> list[dict]:
    """Dolci-Think-RL-7B: `prompt` text, `ground_truth` and `dataset` lists, one verifier per ground truth."""
    base = {"dataset_source": "hand-made", "solution": "", "passrate": 0.5, "difficulty": "easy"}
    return [
        {**base, "id": "m1", "prompt": "What is 2 plus 2?", "ground_truth": ["4"], "dataset": ["math"]},
        {**base, "id": "c1", "prompt": "Write add(a, b).", "ground_truth": [ENCODED], "dataset": ["code"]},
        {**base, "id": "i1", "prompt": "Name a fruit, no commas.", "ground_truth": [IFEVAL], "dataset": ["ifeval"]},
        {**base, "id": "t2", "prompt": "What is 2 plus 2? Say it twice.", "ground_truth": ["4", "4"],
         "dataset": ["gsm8k", "string_matcher"]},
    ]


def instruct_rl() -> list[dict]:
    """Dolci-Instruct-RL: a `messages` prompt (a trailing assistant turn, dropped) and single-entry lists."""
    return [
        {"id": "r1", "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "What is 3 plus 4?"},
                                  {"role": "assistant", "content": "7"}],
         "prompt": "", "ground_truth": ["7"], "dataset": ["General-Quality_Ref"], "dataset_source": "hand-made",
         "solution": "7", "passrate": 1.0, "difficulty": "1"},
        {"id": "r2", "messages": [{"role": "user", "content": "Spell four."}], "prompt": "",
         "ground_truth": ["four"], "dataset": ["string_matcher"], "dataset_source": "hand-made",
         "solution": "four", "passrate": 0.25, "difficulty": "2"},
    ]


def write(tmp_path, name: str, rows: list[dict], kind: str) -> str:
    path = tmp_path / f"{name}.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def read_rlvr(path: str, aliases=None, on_bad_row="error"):
    return read_source(DatasetSpec(path=path), rlvr_row_validator(VERIFIERS), on_bad_row=on_bad_row,
                       adapt=rlvr_adapter(aliases or {}, VERIFIERS))


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"What is {i} plus 2? Write add(a, b). Name a fruit. The answer is {i + 2}." for i in range(40)] * 3
    return train_tokenizer(corpus, vocab_size=300)


# --------------------------------------------------------------------------- RLVR


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_think_rl_rows_load_and_pair_their_verifiers(tmp_path, kind):
    rows, report = read_rlvr(write(tmp_path, "think_rl", think_rl(), kind))
    by_id = {row["id"]: row for row in rows}
    assert report.taken == 4 and report.skipped == 0
    assert by_id["m1"]["messages"] == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert (by_id["m1"]["verifier"], by_id["m1"]["ground_truth"]) == ("math", "4")  # one name: the plain shape
    assert (by_id["c1"]["verifier"], by_id["c1"]["ground_truth"]) == ("code", ENCODED)  # kept as written
    assert by_id["t2"]["verifier"] == [{"name": "gsm8k", "label": "4", "weight": 1.0},
                                       {"name": "string_match", "label": "4", "weight": 1.0}]
    assert verifier_name(by_id["t2"]["verifier"]) == "gsm8k+string_match"
    assert by_id["t2"]["dataset_source"] == "hand-made" and by_id["t2"]["passrate"] == 0.5  # other columns pass


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_instruct_rl_rows_drop_the_trailing_answer_and_resolve_names(tmp_path, kind):
    rows, _ = read_rlvr(write(tmp_path, "instruct_rl", instruct_rl(), kind))
    first, second = sorted(rows, key=lambda r: r["id"])
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["verifier"] == "llm_judge" and second["verifier"] == "string_match"
    assert first["solution"] == "7" and first["difficulty"] == "1"


def test_released_rows_score_as_open_instruct_does(tmp_path):
    """math right: 1; the encoded code tests pass: 1; the two-verifier row right on both: 1 + 1 = 2."""
    rows, _ = read_rlvr(write(tmp_path, "think_rl", think_rl(), "jsonl"))
    answers = {"m1": "The answer is \\boxed{4}.", "c1": "```python\ndef add(a, b):\n    return a + b\n```",
               "i1": "An apple", "t2": "4"}
    items = [{"verifier": r["verifier"], "label": r["ground_truth"], "prediction": answers[r["id"]]} for r in rows]
    scores = {r["id"]: result.score for r, result in zip(rows, rewards.score_batch(items, max_workers=0))}
    assert scores == {"m1": 1.0, "c1": 1.0, "i1": 1.0, "t2": 2.0}


def test_released_rows_encode_to_prompts(tmp_path, tokenizer):
    rows, _ = read_rlvr(write(tmp_path, "think_rl", think_rl(), "parquet"))
    prompts, truncated = encode_prompts(rows, tokenizer, max_prompt_length=512)
    assert truncated == 0 and len(prompts) == 4
    assert tokenizer.decode(prompts[0].ids).endswith("<|im_start|>assistant\n")
    assert {verifier_name(p.verifier) for p in prompts} == {"math", "code", "ifeval", "gsm8k+string_match"}


def test_load_prompts_adapts_with_the_recipe_aliases(tmp_path, tokenizer):
    rows = [{"id": "p1", "prompt": "What is 1 plus 2?", "ground_truth": ["3"], "dataset": ["puzzle"]}]
    path = write(tmp_path, "puzzles", rows, "jsonl")
    raw = {"stage": "rlvr", "model": {"path": "x"}, "output": {"dir": str(tmp_path)}, "optim": {"lr": 1e-6},
           "data": {"train": [{"path": path}], "heldout": [{"path": path}]}}
    with pytest.raises(DataError, match=r"puzzles.jsonl:1: dataset\[0\]: no verifier 'puzzle' \(known: .*string_matcher"):
        load_prompts(validate(raw), tokenizer, VERIFIERS)
    data = load_prompts(validate({**raw, "verifiers": {"aliases": {"puzzle": "string_match"}}}), tokenizer, VERIFIERS)
    assert [(p.verifier, p.ground_truth) for p in data.prompts] == [("string_match", "3")]
    assert [p.verifier for p in data.heldout] == ["string_match"]


@pytest.mark.parametrize("change, problem", [
    ({"ground_truth": ["4", "4", "4"]}, "ground_truth: 3 entries for 2 verifiers in dataset"),
    ({"dataset": ["math", "flan"]}, r"dataset\[1\]: no verifier 'flan' \(known: "),
    ({"dataset": "puzzle", "ground_truth": "4"}, "dataset: no verifier 'puzzle'"),
    ({"dataset": ["code", "math"], "ground_truth": ["bm90IGEgcGlja2xl", "4"]}, r"ground_truth\[0\]: cannot decode: "),
    ({"dataset": ["math", "code_stdio"], "ground_truth": ["4", '["assert x"]']},
     r"ground_truth\[1\]: code_stdio tests must be \{'input'"),
    ({"dataset": None}, "verifier: missing"),
    ({"prompt": None}, "messages: missing"),
    ({"ground_truth": None}, "ground_truth: missing"),
])
def test_bad_rows_name_row_and_field(tmp_path, change, problem):
    good = {"id": "x", "prompt": "What is 2 plus 2?", "ground_truth": ["4", "4"], "dataset": ["math", "gsm8k"]}
    path = write(tmp_path, "bad", [good, {**good, **change}], "jsonl")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: {problem}"):
        read_rlvr(path)
    rows, report = read_rlvr(path, on_bad_row="skip")
    assert report.skipped == 1 and len(rows) == 1


def test_an_os_system_payload_fails_the_row_without_running(tmp_path):
    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {tmp_path / 'ran'}",)

    encoded = base64.b64encode(zlib.compress(pickle.dumps(Payload()))).decode()
    path = write(tmp_path, "evil", [{"prompt": "Write add.", "ground_truth": [encoded], "dataset": ["code"]}], "jsonl")
    with pytest.raises(DataError, match=r"evil.jsonl:1: ground_truth\[0\]: cannot decode: the pickle names"):
        read_rlvr(path)
    assert not (tmp_path / "ran").exists()


def test_rows_in_this_projects_shape_pass_unchanged():
    adapt = rlvr_adapter({}, VERIFIERS)
    rows = [{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": "4", "verifier": "math"},
            {"messages": [{"role": "user", "content": "hi"}], "ground_truth": IFEVAL, "verifier": {"ifeval": 3, "format": 1}},
            {"messages": [{"role": "user", "content": "hi"}], "ground_truth": ["a", "b"], "verifier": "string_match"}]
    for row in rows:
        assert adapt(row) is row
    assert adapt({**rows[0], "verifier": "string_matcher"})["verifier"] == "string_match"  # names still resolve


# --------------------------------------------------------------------------- DPO

PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]
GOOD, BAD = "The answer is 5.", "The answer is 6."


def think_dpo() -> list[dict]:
    """Dolci-Think-DPO-7B: `prompt`, `chosen`, `rejected`, `id`, `dataset_source`, in every shape a side comes in."""
    return [
        {"id": "s", "dataset_source": "hand-made", "prompt": "What is 2 plus 3?", "chosen": GOOD, "rejected": BAD},
        {"id": "a", "dataset_source": "hand-made", "prompt": "What is 2 plus 3?",
         "chosen": [{"role": "assistant", "content": GOOD}], "rejected": [{"role": "assistant", "content": BAD}]},
        {"id": "w", "dataset_source": "hand-made", "prompt": "What is 2 plus 3?",
         "chosen": [*PROMPT, {"role": "assistant", "content": GOOD}],
         "rejected": [*PROMPT, {"role": "assistant", "content": BAD}]},
    ]


def instruct_dpo() -> list[dict]:
    """Dolci-Instruct-DPO: whole conversations, prompt included."""
    return [{"chosen": [*PROMPT, {"role": "assistant", "content": GOOD}],
             "rejected": [*PROMPT, {"role": "assistant", "content": BAD}],
             "chosen_model": "m-a", "rejected_model": "m-b", "prompt_id": "p1", "preference_type": "delta"}]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_think_dpo_rows_become_whole_conversations(tmp_path, kind):
    # one file per shape: a Parquet column holds one type (so does each released file)
    specs = [DatasetSpec(path=write(tmp_path, f"think_dpo_{row['id']}", [row], kind)) for row in think_dpo()]
    mixture = mix(specs, pair_problem, adapt=dpo_adapter)
    rows = mixture.rows
    assert len(rows) == 3 and mixture.skipped == 0
    for row in rows:
        assert row["chosen"] == [*PROMPT, {"role": "assistant", "content": GOOD}], row["id"]
        assert row["rejected"] == [*PROMPT, {"role": "assistant", "content": BAD}], row["id"]
        assert row["dataset_source"] == "hand-made"


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_instruct_dpo_rows_pass_unchanged(tmp_path, kind):
    row = instruct_dpo()[0]
    assert dpo_adapter(row) is row
    data = DataSection(train=[DatasetSpec(path=write(tmp_path, "instruct_dpo", instruct_dpo(), kind))], shuffle=False)
    rows, report = read_pairs(data, DPOSection())
    assert report.read == 1 and report.malformed_skipped == 0 and rows[0]["preference_type"] == "delta"
    assert rows[0]["chosen"][-1]["content"] == GOOD


def test_dpo_prompt_as_a_message_list_and_bad_prompts(tmp_path):
    system = [{"role": "system", "content": "Be brief."}, *PROMPT]
    row = dpo_adapter({"prompt": system, "chosen": GOOD, "rejected": BAD})
    assert row["chosen"] == [*system, {"role": "assistant", "content": GOOD}]
    path = write(tmp_path, "dpo_bad", [{"prompt": [], "chosen": GOOD, "rejected": BAD}], "jsonl")
    with pytest.raises(DataError, match="dpo_bad.jsonl:1: prompt: expected text or a list of messages"):
        mix([DatasetSpec(path=path)], pair_problem, adapt=dpo_adapter)


def test_adapters_are_registered_by_stage():
    assert set(ADAPTERS.names()) == {"rlvr", "dpo"}
    assert ADAPTERS.get("dpo")({}, None) is dpo_adapter
    assert ADAPTERS.get("rlvr")({"puzzle": "math"}, VERIFIERS)({"prompt": "1+1?", "ground_truth": "2",
                                                                "dataset": "puzzle"})["verifier"] == "math"
