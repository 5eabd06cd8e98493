"""Mixtures: counts and fractions honoured, seeded and deterministic, per-source reports."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest

from posttrain.config import DataSection, DatasetSpec
from posttrain.data.mixing import mix, mix_section
from posttrain.data.schemas import sft_row
from posttrain.data.sources import DataError


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache of these throwaway files out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def source(directory: Path, name: str, n: int, bad: tuple[int, ...] = ()) -> str:
    """NAME.jsonl with n chats whose prompts are NAME-0 ... NAME-(n-1); rows in `bad` have no assistant turn."""
    path = directory / f"{name}.jsonl"
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{name}-{i}"}]
        if i not in bad:
            messages.append({"role": "assistant", "content": "ok"})
        rows.append({"messages": messages})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def origin(row: dict) -> str:
    return row["messages"][0]["content"].split("-")[0]


@pytest.fixture
def sources(tmp_path) -> dict[str, str]:
    return {"a": source(tmp_path, "a", 100), "b": source(tmp_path, "b", 40), "c": source(tmp_path, "c", 10)}


def test_counts_and_fractions_are_honoured(sources):
    specs = [DatasetSpec(path=sources["a"], count=30), DatasetSpec(path=sources["b"], fraction=0.25), DatasetSpec(path=sources["c"])]
    mixture = mix(specs, sft_row, seed=0)
    assert Counter(origin(row) for row in mixture.rows) == {"a": 30, "b": 10, "c": 10}
    assert mixture.counts() == {sources["a"]: 30, sources["b"]: 10, sources["c"]: 10}
    assert len(mixture) == 50 and mixture.skipped == 0


def test_fraction_above_one_repeats_a_source(sources):
    mixture = mix([DatasetSpec(path=sources["a"], count=10), DatasetSpec(path=sources["c"], fraction=3.0)], sft_row)
    c_rows = Counter(row["messages"][0]["content"] for row in mixture.rows if origin(row) == "c")
    assert len(c_rows) == 10 and set(c_rows.values()) == {3}


def test_same_seed_same_rows_in_the_same_order(sources):
    specs = [DatasetSpec(path=sources["a"], count=20), DatasetSpec(path=sources["b"], fraction=0.5)]
    assert mix(specs, sft_row, seed=3).rows == mix(specs, sft_row, seed=3).rows


def test_different_seed_different_order(sources):
    specs = [DatasetSpec(path=sources["b"]), DatasetSpec(path=sources["c"])]
    first, second = mix(specs, sft_row, seed=0).rows, mix(specs, sft_row, seed=1).rows
    assert sorted(map(json.dumps, first)) == sorted(map(json.dumps, second))  # whole sources: same rows
    assert first != second


def test_rows_are_shuffled_across_sources(sources):
    rows = mix([DatasetSpec(path=sources["b"]), DatasetSpec(path=sources["c"])], sft_row, seed=0).rows
    assert [origin(row) for row in rows] != ["b"] * 40 + ["c"] * 10


def test_without_shuffle_sources_follow_each_other(sources):
    rows = mix([DatasetSpec(path=sources["c"]), DatasetSpec(path=sources["b"], count=5)], sft_row, shuffle=False).rows
    assert [origin(row) for row in rows] == ["c"] * 10 + ["b"] * 5
    assert [row["messages"][0]["content"] for row in rows[:3]] == ["c-0", "c-1", "c-2"]


def test_a_source_draws_the_same_sample_whatever_else_is_mixed(sources):
    alone = mix([DatasetSpec(path=sources["a"], count=10)], sft_row, seed=5).rows
    beside = mix([DatasetSpec(path=sources["b"], count=3), DatasetSpec(path=sources["a"], count=10)], sft_row, seed=5).rows
    assert sorted(map(json.dumps, alone)) == sorted(json.dumps(row) for row in beside if origin(row) == "a")


def test_a_source_draws_the_same_sample_wherever_it_sits(tmp_path, sources):
    """The draw follows the data, not its directory: a test's temporary copy trains on what `runs/` trained on."""
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    moved = shutil.copy(sources["a"], elsewhere)
    here = mix([DatasetSpec(path=sources["a"], count=10)], sft_row, seed=5).rows
    there = mix([DatasetSpec(path=moved, count=10)], sft_row, seed=5).rows
    assert here == there
    other_seed = mix([DatasetSpec(path=moved, count=10)], sft_row, seed=6).rows
    assert sorted(map(json.dumps, other_seed)) != sorted(map(json.dumps, there))


def test_bad_row_error_names_file_line_and_field(tmp_path, sources):
    broken = source(tmp_path, "bad", 5, bad=(3,))
    with pytest.raises(DataError) as caught:
        mix([DatasetSpec(path=sources["c"]), DatasetSpec(path=broken)], sft_row)
    assert str(caught.value) == f"{broken}:4: messages: no assistant turn to train on"


def test_skipped_rows_are_counted_per_source(tmp_path, sources):
    broken = source(tmp_path, "bad", 8, bad=(0, 5))
    mixture = mix([DatasetSpec(path=sources["c"]), DatasetSpec(path=broken)], sft_row, on_bad_row="skip")
    assert len(mixture) == 16 and mixture.skipped == 2
    assert [(s.read, s.skipped, s.taken) for s in mixture.sources] == [(10, 0, 10), (8, 2, 6)]
    assert mixture.sources[1].examples == [f"{broken}:1: messages: no assistant turn to train on", f"{broken}:6: messages: no assistant turn to train on"]
    report = mixture.report()
    assert report.startswith("16 rows from 2 sources") and "6 rows taken of 6 valid (2 malformed rows skipped" in report


def test_no_sources_is_an_error():
    with pytest.raises(DataError, match="no data sources"):
        mix([], sft_row)


def test_to_dataset_keeps_rows_and_order(sources):
    mixture = mix([DatasetSpec(path=sources["c"])], sft_row, seed=2)
    dataset = mixture.to_dataset()
    assert isinstance(dataset, datasets.Dataset) and dataset.to_list() == mixture.rows


def test_mix_section_uses_the_recipe_data_settings(sources):
    data = DataSection(
        train=[DatasetSpec(path=sources["a"], count=8), DatasetSpec(path=sources["b"], count=4)],
        heldout=[DatasetSpec(path=sources["c"])],
        seed=7,
    )
    train = mix_section(data, sft_row)
    assert train.rows == mix(data.train, sft_row, seed=7).rows
    heldout = mix_section(data, sft_row, split="heldout")
    assert [row["messages"][0]["content"] for row in heldout.rows] == [f"c-{i}" for i in range(10)]  # file order
    with pytest.raises(ValueError, match="split must be"):
        mix_section(data, sft_row, split="test")
