"""Every Olmo 3 recipe's data section loads the released datasets' row shapes, as JSON lines and as Parquet.

The fixtures (tests/fixtures/released/NAME/train.jsonl) are written by hand in
exactly the column names and value types of the hub datasets the recipes
name (see the README there). Each recipe is loaded as shipped, with one
override: `data.train.0.path` points at the fixture of the dataset the
recipe names. Then the data go through `posttrain data check` (its exit
status and report) and through the stage's own loader, and must come out
whole: every row valid, every row taken, tool calls rendered, verifiers named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain.cli import main
from posttrain.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "released"
RECIPES = [f"{size}/{variant}/{stage}" for size in ("7b", "32b") for variant in ("think", "instruct")
           for stage in ("sft", "dpo", "rlvr")]

# The released value types, for the Parquet copies (a JSON-lines file carries no types).
_TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
_TOOL_TURN = pa.struct([("role", pa.string()), ("content", pa.string()), ("functions", pa.string()),
                        ("function_calls", pa.string())])
_STRINGS = pa.list_(pa.string())
SCHEMAS = {
    "Dolci-Think-SFT": pa.schema([("id", pa.string()), ("messages", pa.list_(_TURN)), ("dataset_source", pa.string())]),
    "Dolci-Instruct-SFT": pa.schema([("id", pa.string()), ("messages", pa.list_(_TOOL_TURN)),
                                     ("source_dataset", pa.string()), ("domain", pa.string())]),
    "Dolci-Think-DPO": pa.schema([("prompt", pa.string()), ("chosen", pa.list_(_TURN)), ("rejected", pa.list_(_TURN)),
                                  ("id", pa.string()), ("dataset_source", pa.string())]),
    "Dolci-Instruct-DPO": pa.schema([("chosen", pa.list_(_TURN)), ("rejected", pa.list_(_TURN)),
                                     ("chosen_model", pa.string()), ("rejected_model", pa.string()),
                                     ("prompt_id", pa.string()), ("preference_type", pa.string())]),
    "Dolci-Think-RL": pa.schema([("prompt", pa.string()), ("ground_truth", _STRINGS), ("dataset", _STRINGS),
                                 ("dataset_source", pa.string()), ("id", pa.string())]),
    "Dolci-Instruct-RL": pa.schema([("prompt", pa.string()), ("ground_truth", _STRINGS), ("dataset", _STRINGS),
                                    ("solution", pa.string()), ("passrate", pa.float64()), ("difficulty", pa.string())]),
}


def schema_of(dataset: str) -> pa.Schema:
    return next(schema for family, schema in SCHEMAS.items() if dataset.startswith(family))


def fixture_rows(dataset: str) -> list[dict]:
    with (FIXTURES / dataset / "train.jsonl").open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(params=["jsonl", "parquet"])
def released(request, tmp_path):
    """fn(recipe) -> (config overrides pointing the recipe's dataset at its fixture, the fixture's rows)."""

    def point(recipe: str) -> tuple[list[str], list[dict]]:
        dataset = load_recipe(REPO / "recipes" / "olmo3" / f"{recipe}.yaml").data.train[0].path.split("/")[-1]
        rows = fixture_rows(dataset)
        if request.param == "jsonl":
            path = FIXTURES / dataset / "train.jsonl"
        else:
            path = tmp_path / dataset / "train.parquet"
            path.parent.mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema_of(dataset)), path)
        cache = [f"data.cache_dir={tmp_path / 'cache'}"] if recipe.endswith("sft") else []  # SFT's token cache
        return [f"data.train.0.path={path}", *cache], rows

    return point


@pytest.mark.parametrize("recipe", RECIPES)
def test_data_check_reads_every_olmo3_recipe_data_section_whole(recipe, released, tiny_dir, tmp_path, capsys):
    overrides, rows = released(recipe)
    report = tmp_path / "check.json"
    status = main(["data", "check", "--recipe", str(REPO / "recipes" / "olmo3" / f"{recipe}.yaml"),
                   "--tokenizer", str(tiny_dir / "base"), "--json", str(report), *overrides])
    captured = capsys.readouterr()
    out = captured.out
    assert status == 0, out + captured.err
    (source,) = json.loads(report.read_text())["sources"]
    assert (source["read"], source["malformed"], source["taken"]) == (len(rows), 0, len(rows)), out
    assert source["length_percentiles"]["max"] > 0 and "example:" in out
    if recipe.endswith("rlvr"):  # open-instruct's verifier names, resolved through the alias table
        assert sum(source["verifiers"].values()) == len(rows) and "llm_judge" in " ".join(source["verifiers"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_stage_loader_reads_its_olmo3_recipe_data(recipe, released, tiny_dir):
    from transformers import AutoTokenizer

    overrides, rows = released(recipe)
    config = load_recipe(REPO / "recipes" / "olmo3" / f"{recipe}.yaml", [*overrides, f"model.path={tiny_dir / 'base'}"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "base")
    stage = recipe.rsplit("/", 1)[1]
    if stage == "sft":
        from posttrain.data.sft import load_split

        examples, report = load_split(config, tokenizer, "train")
        assert report.examples == len(rows) and report.skipped_bad_rows == 0
        decoded = "".join(tokenizer.decode(examples[i]["input_ids"]) for i in range(len(examples)))
        if "Instruct" in config.data.train[0].path:  # the tool turns are rendered, as Olmo 3's template does
            assert "<function_calls>get_weather(city=\"Paris\")</function_calls>" in decoded
            assert "<|im_start|>environment\n" in decoded and "<functions>[" in decoded
    elif stage == "dpo":
        from posttrain.data.preference import load_pairs

        pairs, report = load_pairs(tokenizer, config.data, config.dpo)
        assert report.kept == len(rows) and report.malformed_skipped == report.bad_pairs_skipped == 0
    else:
        import rewards
        from posttrain.data.rlvr import load_prompts, verifier_name

        data = load_prompts(config, tokenizer, rewards.names())
        assert len(data.prompts) == len(rows) and data.mixture.skipped == 0
        names = {verifier_name(p.verifier) for p in data.prompts}
        assert {"math", "llm_judge"} <= {n for name in names for n in name.split("+")}


def check(recipe: str, tiny_dir: Path, *overrides: str) -> int:
    """`posttrain data check`'s exit status on an Olmo 3 recipe, measured with the tiny tokenizer."""
    return main(["data", "check", "--recipe", str(REPO / "recipes" / "olmo3" / f"{recipe}.yaml"),
                 "--tokenizer", str(tiny_dir / "base"), *overrides])


def test_data_check_names_a_misspelled_column_an_unknown_verifier_and_bad_rows(tiny_dir, tmp_path, capsys):
    rows = fixture_rows("Dolci-Think-RL-7B")
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    status = check("7b/think/rlvr", tiny_dir, f"data.train.0.path={path}", "data.train.0.columns.promt=messages")
    out = capsys.readouterr().out
    assert status == 1 and "ERROR" in out and "no column 'promt' to rename to 'messages'" in out

    unknown = [dict(rows[0], dataset=["flan"]), *rows[1:], dict(rows[0], prompt=None)]
    path.write_text("".join(json.dumps(row) + "\n" for row in unknown))
    status = check("7b/think/rlvr", tiny_dir, f"data.train.0.path={path}")
    out = capsys.readouterr().out
    assert status == 1, out  # on_bad_row: error (the recipe's): the stage would stop at row 1
    assert f"bad row: {path}:1: dataset[0]: no verifier 'flan'" in out
    assert f"bad row: {path}:{len(unknown)}:" in out and f"2 malformed, {len(rows) - 1} taken" in out.replace("valid, ", "")


def test_the_stage_stops_at_the_first_unknown_verifier_naming_file_line_and_field(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    import rewards
    from posttrain.data.rlvr import load_prompts
    from posttrain.data.sources import DataError

    rows = fixture_rows("Dolci-Instruct-RL")
    rows[2] = dict(rows[2], dataset=["puzzle"])
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_recipe(REPO / "recipes" / "olmo3" / "7b" / "instruct" / "rlvr.yaml",
                         [f"data.train.0.path={path}", f"model.path={tiny_dir / 'base'}"])
    with pytest.raises(DataError, match=rf"{path}:3: dataset\[0\]: no verifier 'puzzle'"):
        load_prompts(config, AutoTokenizer.from_pretrained(tiny_dir / "base"), rewards.names())
    aliased = load_recipe(REPO / "recipes" / "olmo3" / "7b" / "instruct" / "rlvr.yaml",
                          [f"data.train.0.path={path}", f"model.path={tiny_dir / 'base'}", "verifiers.aliases.puzzle=string_match"])
    data = load_prompts(aliased, AutoTokenizer.from_pretrained(tiny_dir / "base"), rewards.names())
    assert [p.verifier for p in data.prompts].count("string_match") == 1  # (the mixture is shuffled)
