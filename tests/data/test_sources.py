"""One source -> rows: every file kind, splits in directories, renaming, validation errors and skips, sampling."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import datasets
import pytest

from posttrain.config import DatasetSpec
from posttrain.data.schemas import sft_row
from posttrain.data.sources import DataError, read_source, sample


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache of these throwaway files out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def chat(i: int, tag: str = "q") -> dict:
    return {"messages": [{"role": "user", "content": f"{tag}{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path: Path, rows: list[dict], blank_after: int | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def prompts(rows: list[dict]) -> list[str]:
    return [row["messages"][0]["content"] for row in rows]


def read(path, seed: int = 0, on_bad_row: str = "error", **spec):
    return read_source(DatasetSpec(path=str(path), **spec), sft_row, seed=seed, on_bad_row=on_bad_row)


# --------------------------------------------------------------------------
# File kinds


def test_jsonl_rows_in_file_order(tmp_path):
    rows, report = read(write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(5)]))
    assert prompts(rows) == ["q0", "q1", "q2", "q3", "q4"]
    assert (report.read, report.skipped, report.taken) == (5, 0, 5)
    assert rows[0]["messages"][1] == {"role": "assistant", "content": "a0"}


def test_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([chat(i) for i in range(3)]))
    assert prompts(read(path)[0]) == ["q0", "q1", "q2"]


def test_parquet_file(tmp_path):
    datasets.Dataset.from_list([chat(i) for i in range(4)]).to_parquet(str(tmp_path / "a.parquet"))
    assert prompts(read(tmp_path / "a.parquet")[0]) == ["q0", "q1", "q2", "q3"]


def test_arrow_file(tmp_path):
    datasets.Dataset.from_list([chat(i) for i in range(4)]).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    shutil.copy(arrow, tmp_path / "a.arrow")
    assert prompts(read(tmp_path / "a.arrow")[0]) == ["q0", "q1", "q2", "q3"]


def test_unsupported_file_type(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(DataError, match=r"a\.csv: unsupported file type '\.csv'"):
        read(tmp_path / "a.csv")


def test_missing_local_file_is_not_taken_for_a_hub_name(tmp_path):
    for missing in (tmp_path / "nope.jsonl", "./data/nope"):
        with pytest.raises(DataError, match="no such file or directory"):
            read(missing)


# --------------------------------------------------------------------------
# Directories of splits


def test_directory_picks_the_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [chat(i, "train") for i in range(3)])
    write_jsonl(tmp_path / "heldout.jsonl", [chat(i, "held") for i in range(2)])
    assert prompts(read(tmp_path)[0]) == ["train0", "train1", "train2"]
    assert prompts(read(tmp_path, split="heldout")[0]) == ["held0", "held1"]


def test_directory_without_the_split_lists_what_is_there(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [chat(0)])
    with pytest.raises(DataError, match=r"no 'test' split .* found: train\.jsonl"):
        read(tmp_path, split="test")


def test_directory_of_parquet_shards(tmp_path):
    for shard in range(2):
        rows = [chat(shard * 10 + i) for i in range(2)]
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / f"train-0000{shard}-of-00002.parquet"))
    assert prompts(read(tmp_path)[0]) == ["q0", "q1", "q10", "q11"]


def test_directory_with_a_saved_dataset_per_split(tmp_path):
    datasets.Dataset.from_list([chat(i) for i in range(3)]).save_to_disk(str(tmp_path / "train"))
    assert prompts(read(tmp_path)[0]) == ["q0", "q1", "q2"]


# --------------------------------------------------------------------------
# Bad rows: FILE:ROW: field: problem, or skipped and counted


def bad_rows(tmp_path: Path) -> Path:
    rows = [chat(i) for i in range(6)]
    rows[3]["messages"][1]["role"] = "bot"
    rows[5]["messages"] = []
    return write_jsonl(tmp_path / "a.jsonl", rows, blank_after=2)  # a blank line 3: row 3 is on line 5


def test_bad_row_fails_naming_file_line_and_field(tmp_path):
    path = bad_rows(tmp_path)
    with pytest.raises(DataError) as caught:
        read(path)
    assert str(caught.value) == f"{path}:5: messages[1].role: unknown role 'bot' (expected one of system, user, assistant, environment, tool)"


def test_bad_rows_skipped_and_counted(tmp_path):
    path = bad_rows(tmp_path)
    rows, report = read(path, on_bad_row="skip")
    assert prompts(rows) == ["q0", "q1", "q2", "q4"]
    assert (report.read, report.skipped, report.taken) == (6, 2, 4)
    assert report.examples == [
        f"{path}:5: messages[1].role: unknown role 'bot' (expected one of system, user, assistant, environment, tool)",
        f"{path}:7: messages: empty conversation",
    ]
    assert "4 rows taken of 4 valid (2 malformed rows skipped" in report.describe()


def test_bad_row_in_parquet_names_the_row(tmp_path):
    rows = [chat(i) for i in range(3)]
    rows[2]["messages"][0]["content"] = None
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    with pytest.raises(DataError, match=r"a\.parquet:row 3: messages\[0\]\.content: missing$"):
        read(tmp_path / "a.parquet")


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(chat(0)) + "\n" + '{"messages": [\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: not valid JSON: Expecting value \(column 15\)"):
        read(path)


def test_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(chat(0)) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object per line, got list"):
        read(path)


def test_count_from_a_source_with_no_valid_rows(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"messages": []}])
    with pytest.raises(DataError, match=r"no valid rows to take 3 from \(1 of 1 rows malformed\)"):
        read(path, count=3, on_bad_row="skip")


def test_on_bad_row_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        read(write_jsonl(tmp_path / "a.jsonl", [chat(0)]), on_bad_row="ignore")


# --------------------------------------------------------------------------
# Column renaming


def test_columns_are_renamed_before_validation(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"conversation": chat(i)["messages"], "id": i} for i in range(2)])
    rows, _ = read(path, columns={"conversation": "messages"})
    assert prompts(rows) == ["q0", "q1"] and rows[1]["id"] == 1 and "conversation" not in rows[0]


def test_renaming_a_missing_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(0)])
    with pytest.raises(DataError, match=r"columns: no column 'conv' to rename to 'messages' \(columns: messages\)"):
        read(path, columns={"conv": "messages"})


def test_renaming_onto_an_existing_column_fails(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{**chat(0), "chat": []}])
    with pytest.raises(DataError, match="would overwrite the existing column 'messages'"):
        read(path, columns={"chat": "messages"})


def test_columns_can_be_swapped(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"messages": 1, "other": chat(0)["messages"]}])
    rows, _ = read(path, columns={"messages": "other", "other": "messages"})
    assert rows[0]["other"] == 1 and prompts(rows) == ["q0"]


# --------------------------------------------------------------------------
# Sampling


def test_count_takes_distinct_rows_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(100)])
    rows, report = read(path, count=10)
    numbers = [int(p[1:]) for p in prompts(rows)]
    assert len(numbers) == 10 == len(set(numbers)) == report.taken
    assert numbers == sorted(numbers)


def test_sampling_depends_on_the_seed_only(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(100)])
    first, again, other = (prompts(read(path, count=10, seed=s)[0]) for s in (0, 0, 1))
    assert first == again
    assert first != other


def test_fraction_takes_a_rounded_share(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(10)])
    assert len(read(path, fraction=0.25)[0]) == 2  # round(2.5) -> 2 (banker's rounding)
    assert len(read(path, fraction=0.5)[0]) == 5


def test_fraction_above_one_repeats_every_row_then_tops_up(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(10)])
    rows, report = read(path, fraction=2.5)
    counts = {p: prompts(rows).count(p) for p in set(prompts(rows))}
    assert report.taken == len(rows) == 25
    assert sorted(counts.values()) == [2] * 5 + [3] * 5


def test_count_above_the_source_size_repeats(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(4)])
    rows, _ = read(path, count=9)
    assert len(rows) == 9 and set(prompts(rows)) == {"q0", "q1", "q2", "q3"}


def test_repeated_rows_are_separate_objects():
    rows = [{"x": 1}]
    out = sample(rows, 3, random.Random(0))
    out[0]["x"] = 2
    assert [row["x"] for row in out] == [2, 1, 1] and rows == [{"x": 1}]
