"""The token cache and the mixture over it against the per-row path they replace.

`load_split` (token cache, index arrays) must give what `load_split_per_row`
(one tokenizer call per row, Python lists) gives: the same examples token for
token, in the same order, with the same counts; the packed rows of
`pack_examples`; and a second run that tokenises nothing.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from posttrain.config import DatasetSpec, RecipeError, validate
from posttrain.data import sft as D
from posttrain.data import token_cache as TC
from posttrain.data.chat import think_content
from posttrain.data.packing import pack_examples
from posttrain.data.sources import DataError
from posttrain.data.stored_batches import StoredBatch, mapped_store
from posttrain.tiny.tokenizer import train_tokenizer


def chat(question: str, answer: str, *, earlier: tuple[str, str] | None = None, system: str | None = None,
         reasoning: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    if earlier:
        messages += [{"role": "user", "content": earlier[0]}, {"role": "assistant", "content": earlier[1]}]
    last = {"role": "assistant", "content": answer}
    if reasoning:
        last["reasoning_content"] = reasoning
    return {"messages": messages + [{"role": "user", "content": question}, last]}


ROWS = [chat(f"What is {a} plus {b}?", think_content(f"{a} + {b} = {a + b}", f"So \\boxed{{{a + b}}}."),
             earlier=("Say hi.", "<think>greet</think>hi hello") if (a + b) % 3 == 0 else None,
             system="Be brief." if a % 2 else None)
        for a in range(6) for b in range(5)]
ROWS += [chat("Tell me more.", "hello there " * (10 * i), reasoning="long " * i) for i in range(1, 6)]
ROWS += [chat("hi " * 80, "ok")]  # the answer starts beyond a short max_length
BAD = [{"messages": [{"role": "user", "content": "no answer here"}]},
       {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [json.dumps(row) for row in ROWS] * 4 + ["say hi hello there a long answer " * 5]
    return train_tokenizer(corpus, vocab_size=320)


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def recipe(tmp_path, train: list[dict], think: bool = True, **data) -> object:
    raw = {"stage": "sft", "model": {"path": "unused"}, "output": {"dir": "unused"}, "optim": {"lr": 1e-3},
           "batch": {"tokens": 1024, "micro_batch_size": 2}, "sft": {"train_on_think": think},
           "data": {"train": train, "max_length": 512, "cache_dir": str(tmp_path / "cache"), **data}}
    return validate(raw)


def both(config, tokenizer):
    """(cached examples as dicts, cached report, per-row examples, per-row report)."""
    examples, report = D.load_split(config, tokenizer, "train")
    old, old_report = D.load_split_per_row(config, tokenizer, "train")
    return [dict(e) for e in examples], report, old, old_report


def same_counts(report, old_report) -> None:
    new, ref = report.as_dict(), old_report.as_dict()
    new.pop("fingerprint"), ref.pop("fingerprint")
    assert new == ref


# ---------------------------------------------------------------- the same examples


@pytest.mark.parametrize("think", [True, False])
@pytest.mark.parametrize("max_length,overlong", [(512, "drop"), (64, "drop"), (64, "truncate")])
def test_examples_equal_the_per_row_path_token_for_token(tmp_path, tokenizer, think, max_length, overlong):
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}], think=think,
                    max_length=max_length, overlong=overlong)
    new, report, old, old_report = both(config, tokenizer)
    assert new == old and len(new) > 10
    same_counts(report, old_report)
    if max_length == 64:
        assert report.overlong_dropped + report.overlong_truncated > 0


def test_count_fraction_and_repeats_select_and_order_rows_as_mix_section(tmp_path, tokenizer):
    a = write(tmp_path / "a.jsonl", ROWS[:20])
    b = write(tmp_path / "b.jsonl", ROWS[20:])
    for sources in ([{"path": a, "count": 7}, {"path": b, "fraction": 2.5}],
                    [{"path": a, "fraction": 0.5}, {"path": b, "count": 33}, {"path": a, "count": 3}]):
        for seed, shuffle in ((0, True), (5, True), (0, False)):
            config = recipe(tmp_path, sources, seed=seed, shuffle=shuffle)
            new, report, old, old_report = both(config, tokenizer)
            assert new == old
            same_counts(report, old_report)
    heldout = recipe(tmp_path, [{"path": a}], heldout=[{"path": b, "count": 12}])
    new = [dict(e) for e in D.load_split(heldout, tokenizer, "heldout")[0]]
    assert new == D.load_split_per_row(heldout, tokenizer, "heldout")[0]


def test_many_processes_give_what_one_gives(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(TC, "MIN_ROWS_PER_PROCESS", 8)
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}], num_proc=2)
    new, _, old, _ = both(config, tokenizer)
    assert new == old


def test_packed_rows_equal_pack_examples(tmp_path, tokenizer):
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}])
    examples, _ = D.load_split(config, tokenizer, "train")
    old, _ = D.load_split_per_row(config, tokenizer, "train")
    rows = D.to_rows(examples, 200, packing=True)
    assert list(rows) == pack_examples(old, 200)
    assert len(rows) < len(examples)
    assert [dict(e) for e in D.to_rows(examples, 200, packing=False)] == old
    with pytest.raises(ValueError, match="must be 1..max_length=40"):
        D.to_rows(examples, 40, packing=True)


# ---------------------------------------------------------------- the cache


def test_a_second_run_reads_the_cache_and_tokenises_nothing(tmp_path, tokenizer, monkeypatch, capsys):
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}])
    first, report = D.load_split(config, tokenizer, "train")
    assert "tokenising 36 rows with 1 processes" in capsys.readouterr().out

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised on a cache hit")

    monkeypatch.setattr(TC, "encode_batch", no_tokenising)
    second, again = D.load_split(config, tokenizer, "train")
    assert "cache hit, 36 rows" in capsys.readouterr().out
    assert [dict(e) for e in second] == [dict(e) for e in first]
    assert again.fingerprint == report.fingerprint
    assert isinstance(second.stores[0].tokens, TC.np.memmap)


def test_the_key_changes_with_the_file_max_length_and_tokenizer(tmp_path, tokenizer):
    path = write(tmp_path / "train.jsonl", ROWS)
    spec = DatasetSpec(path=path)
    transform = TC.Transform(tokenizer, D.SFT_ROW, max_length=512, overlong="drop", train_on_think=True)
    key = TC.cache_key(spec, transform)
    assert TC.cache_key(DatasetSpec(path=path), TC.Transform(tokenizer, D.SFT_ROW, 512, "drop", True)) == key
    assert TC.cache_key(spec, TC.Transform(tokenizer, D.SFT_ROW, 256, "drop", True)) != key
    assert TC.cache_key(spec, TC.Transform(tokenizer, D.SFT_ROW, 512, "truncate", True)) != key
    assert TC.cache_key(spec, TC.Transform(tokenizer, D.SFT_ROW, 512, "drop", False)) != key
    assert TC.cache_key(DatasetSpec(path=path, columns={"messages": "messages"}), transform) != key
    other = train_tokenizer([json.dumps(row) for row in ROWS] * 4, vocab_size=300)
    assert TC.cache_key(spec, TC.Transform(other, D.SFT_ROW, 512, "drop", True)) != key
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = TC.cache_key(spec, transform)
    assert touched != key
    with open(path, "a") as handle:
        handle.write(json.dumps(ROWS[0]) + "\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same mtime, other size
    assert TC.cache_key(spec, transform) not in (key, touched)


def test_a_half_written_cache_is_ignored(tmp_path, tokenizer, capsys):
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}])
    transform = TC.Transform(tokenizer, D.SFT_ROW, 512, "drop", True)
    key = TC.cache_key(config.data.train[0], transform)
    half = tmp_path / "cache" / f".tmp-{key}-killed"  # what a killed build leaves
    half.mkdir(parents=True)
    (half / "tokens.bin").write_bytes(b"\0" * 12)
    (half / "offsets.npy").write_bytes(b"junk")
    new, _, old, _ = both(config, tokenizer)
    assert "tokenising 36 rows" in capsys.readouterr().out
    assert new == old
    assert (tmp_path / "cache" / key / "report.json").exists()


# ---------------------------------------------------------------- bad rows


def test_a_bad_row_fails_naming_file_line_and_field(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(BAD[1]) + "\n")
    config = recipe(tmp_path, [{"path": str(path)}])
    with pytest.raises(DataError, match=r"train.jsonl:4: messages\[1\].role: unknown role 'bot'"):
        D.load_split(config, tokenizer, "train")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]  # stopped: nothing cached


def test_a_bad_row_stops_every_tokenising_process(tmp_path, tokenizer, monkeypatch):
    """With two processes the one that meets the bad row stops the other at its next batch, not at its shard's end."""
    calls = tmp_path / "calls"
    encode = TC.encode_batch

    def counted(*args, **kwargs):
        with calls.open("a") as handle:  # the processes are forked: a file counts across them
            handle.write("x")
        return encode(*args, **kwargs)

    monkeypatch.setattr(TC, "BATCH_ROWS", 20)
    monkeypatch.setattr(TC, "MIN_ROWS_PER_PROCESS", 1)
    monkeypatch.setattr(TC, "encode_batch", counted)
    rows = ROWS * 24  # 864 rows: 22 batches per process
    path = write(tmp_path / "train.jsonl", [BAD[1], *rows[1:]])
    config = recipe(tmp_path, [{"path": path}], num_proc=2)
    with pytest.raises(DataError, match=r"train.jsonl:1: messages\[1\].role: unknown role 'bot'"):
        D.load_split(config, tokenizer, "train")
    assert len(calls.read_text()) < 2 * 5  # of 44 batches in all


def test_bad_rows_are_skipped_and_counted(tmp_path, tokenizer):
    path = write(tmp_path / "train.jsonl", [ROWS[0], *BAD, ROWS[1], BAD[0]])
    new, report, old, old_report = both(recipe(tmp_path, [{"path": path}], on_bad_row="skip"), tokenizer)
    assert new == old and report.examples == 2
    assert report.skipped_bad_rows == 3 and len(report.bad_row_examples) == 3
    assert "train.jsonl:2: messages: no assistant turn" in report.bad_row_examples[0]
    same_counts(report, old_report)


def test_columns_are_renamed_before_validation(tmp_path, tokenizer):
    path = write(tmp_path / "train.jsonl", [{"conversation": row["messages"]} for row in ROWS])
    new, _, old, _ = both(recipe(tmp_path, [{"path": path, "columns": {"conversation": "messages"}}]), tokenizer)
    assert new == old
    with pytest.raises(DataError, match="columns: no column 'chat'"):
        D.load_split(recipe(tmp_path, [{"path": path, "columns": {"chat": "messages"}}]), tokenizer, "train")


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_streamed_source_takes_its_first_count_rows(tmp_path, tokenizer, suffix):
    import datasets

    path = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        write(path, ROWS)
    else:
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    config = recipe(tmp_path, [{"path": str(path), "streaming": True, "count": 9}], shuffle=False)
    examples, report = D.load_split(config, tokenizer, "train")
    want = [D.tokenize_row(tokenizer, row["messages"], True) for row in ROWS[:9]]
    assert [dict(e) for e in examples] == want and report.rows == 9
    with pytest.raises(RecipeError, match="streaming: a streamed source needs count"):
        recipe(tmp_path, [{"path": str(path), "streaming": True, "fraction": 0.5}])


# ---------------------------------------------------------------- micro-batches read on the learner ranks


@pytest.mark.parametrize("packing", [True, False])
def test_stored_batches_read_on_a_rank_equal_the_driver_collated_ones(packing, tokenizer, tmp_path):
    config = recipe(tmp_path, [{"path": write(tmp_path / "train.jsonl", ROWS)}], overlong="truncate")
    examples, _ = D.load_split(config, tokenizer, "train")
    rows = D.to_rows(examples, config.data.max_length, packing)
    plan = D.StepPlan(num_rows=len(rows), rows_per_step=7, micro_batch_size=2, world_size=3, epochs=1, seed=0)
    for step in range(plan.total_steps):
        stored = D.step_batches(plan, rows, step, tokenizer.pad_token_id)
        collated = [[D.collate([rows[i] for i in part], tokenizer.pad_token_id) if part
                     else D.empty_batch(tokenizer.pad_token_id) for part in rank] for rank in plan.rank_micro_batches(step)]
        for rank_stored, rank_collated in zip(stored, collated):
            for mine, theirs in zip(rank_stored, rank_collated):
                if isinstance(mine, StoredBatch):
                    shipped = pickle.loads(pickle.dumps(mine))  # what Ray sends: indices, not tokens
                    assert len(pickle.dumps(mine)) < 4096
                    mapped_store.cache_clear()  # as a fresh learner process
                    mine = shipped.to("cpu")
                for name in ("input_ids", "labels", "position_ids", "attention_mask", "row_lengths"):
                    a, b = getattr(mine, name), getattr(theirs, name)
                    assert (a is None and b is None) or torch.equal(a, b), name
        flat_stored = [b for rank in stored for b in rank]
        flat_collated = [b for rank in collated for b in rank]
        assert D.batch_token_counts(flat_stored) == D.batch_token_counts(flat_collated)
