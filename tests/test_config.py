"""Recipes: loading, `base:` inheritance, overrides, and every validation error path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrain.config import (
    COMMAND_LINE,
    DPOConfig,
    RecipeError,
    RLVRConfig,
    SFTConfig,
    config_hash,
    dump_yaml,
    load_recipe,
    parse_override,
    to_dict,
)

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

MINIMAL_SFT = {
    "stage": "sft",
    "model": {"path": "runs/tiny/base"},
    "data": {"train": [{"path": "runs/tiny/data/sft_think/train.jsonl"}]},
    "output": {"dir": "runs/x/sft"},
    "optim": {"lr": 1e-4},
    "batch": {"sequences": 8},
}


def write(directory: Path, name: str, content) -> Path:
    """Write a recipe (a mapping dumped as YAML, or raw text) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def recipe_error(path: Path, overrides=()) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides)
    return str(caught.value)


def with_(recipe: dict, **changes) -> dict:
    """A copy of `recipe` with top-level keys replaced, or (mappings) merged one level deep."""
    out = json.loads(json.dumps(recipe))
    for key, value in changes.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --------------------------------------------------------------------------
# Loading what is valid


def test_minimal_sft_recipe_loads_with_defaults(tmp_path):
    config = load_recipe(write(tmp_path, "sft.yaml", MINIMAL_SFT))
    assert isinstance(config, SFTConfig)
    assert config.optim.lr == 1e-4
    assert config.deepspeed.zero_stage == 2 and config.distributed.num_workers == 1  # section defaults
    assert config.data.train[0].split == "train"


def test_stage_key_picks_the_schema(tmp_path):
    dpo = load_recipe(write(tmp_path, "dpo.yaml", with_(MINIMAL_SFT, stage="dpo")))
    rlvr = load_recipe(write(tmp_path, "rlvr.yaml", with_(MINIMAL_SFT, stage="rlvr", grpo={"prompts_per_step": 1})))
    assert isinstance(dpo, DPOConfig) and dpo.dpo.loss == "dpo_norm"
    assert isinstance(rlvr, RLVRConfig) and rlvr.grpo.samples_per_prompt == 8


def test_rlvr_batch_may_be_omitted(tmp_path):
    raw = with_(MINIMAL_SFT, stage="rlvr")
    del raw["batch"]
    assert load_recipe(write(tmp_path, "rlvr.yaml", raw)).batch.sequences == 64 * 8  # derived from grpo


@pytest.mark.parametrize("override", ["data.max_length=512", "data.overlong=drop", "optim.epochs=2", "optim.max_steps=5"])
def test_sequence_lengths_and_epochs_are_keys_of_sft_and_dpo_only(tmp_path, override):
    """RLVR's lengths are rollout.max_prompt_length/max_response_length and its run is grpo.steps: there these
    keys would validate and do nothing, so they are unknown."""
    key = override.split("=")[0]
    rlvr = write(tmp_path, "rlvr.yaml", with_(MINIMAL_SFT, stage="rlvr", grpo={"prompts_per_step": 1}))
    assert f"{COMMAND_LINE}: unknown key {key!r}" in recipe_error(rlvr, [override])
    for stage in ("sft", "dpo"):
        load_recipe(write(tmp_path, f"{stage}.yaml", with_(MINIMAL_SFT, stage=stage)), [override])


def test_rlvr_weight_syncs_and_what_ipc_needs(tmp_path):
    path = write(tmp_path, "rlvr.yaml", with_(MINIMAL_SFT, stage="rlvr", grpo={"prompts_per_step": 8},
                                              batch={"sequences": 64}))
    assert load_recipe(path).rollout.weight_sync == "reload"
    assert load_recipe(path, ["rollout.weight_sync=broadcast"]).rollout.weight_sync == "broadcast"
    assert load_recipe(path, ["rollout.weight_sync=ipc"]).rollout.weight_sync == "ipc"
    assert "rollout.tensor_parallel_size must be 1" in recipe_error(
        path, ["rollout.weight_sync=ipc", "rollout.tensor_parallel_size=2"])
    assert "rollout.weight_sync" in recipe_error(path, ["rollout.weight_sync=nccl"])


def test_exponent_floats_and_yaml_1_1_booleans(tmp_path):
    """`1e-5` is a float (PyYAML alone reads a string) and `on` stays text (PyYAML alone reads True)."""
    text = yaml.safe_dump(MINIMAL_SFT).replace("lr: 0.0001", "lr: 1e-5") + "logging:\n  wandb_project: on\n"
    config = load_recipe(write(tmp_path, "sft.yaml", text))
    assert config.optim.lr == 1e-5
    assert config.logging.wandb_project == "on"


# --------------------------------------------------------------------------
# Unknown keys: file, key path and the closest valid key


def test_unknown_top_level_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optimm={"lr": 1.0}))
    message = recipe_error(path)
    assert f"{path}: unknown key 'optimm'; did you mean 'optim'?" in message
    assert "valid here:" in message and "distributed" in message


def test_unknown_nested_key_names_the_dotted_path(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optim={"lr": 1e-4, "warmup_ration": 0.1}))
    assert f"{path}: unknown key 'optim.warmup_ration'; did you mean 'optim.warmup_ratio'?" in recipe_error(path)


def test_unknown_key_inside_a_list_item(tmp_path):
    data = {"train": [{"path": "a.jsonl"}, {"path": "b.jsonl", "fractoin": 0.5}]}
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, data=data))
    message = recipe_error(path)
    assert f"{path}: unknown key 'data.train.1.fractoin'; did you mean 'data.train.1.fraction'?" in message
    assert "valid here: columns, count, fraction, name, path, revision, split, streaming" in message


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, model={"path": "m", "zzzzzz": 1}))
    message = recipe_error(path)
    assert "unknown key 'model.zzzzzz' (valid here: attn_implementation, dtype," in message
    assert "did you mean" not in message


def test_unknown_key_from_a_base_names_the_base_file(tmp_path):
    write(tmp_path, "common.yaml", {"optim": {"lr": 1e-4, "wieght_decay": 0.1}})
    child = with_(MINIMAL_SFT, base="common.yaml")
    del child["optim"]
    path = write(tmp_path, "sft.yaml", child)
    message = recipe_error(path)
    assert f"{tmp_path / 'common.yaml'}: unknown key 'optim.wieght_decay'; did you mean 'optim.weight_decay'?" in message
    assert f"{path}:" not in message


def test_unknown_key_from_an_override_names_the_command_line(tmp_path):
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    message = recipe_error(path, ["optim.lrr=1e-5"])
    assert "command line: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in message


# --------------------------------------------------------------------------
# Types, ranges, required keys, stage


def test_wrong_type_names_the_key_and_what_was_expected(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optim={"lr": "fast"}))
    message = recipe_error(path)
    assert f"{path}: key 'optim.lr': Input should be a valid number" in message and "got 'fast'" in message


def test_wrong_choice_lists_the_allowed_values(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, model={"path": "m", "dtype": "fp8"}))
    message = recipe_error(path)
    assert "key 'model.dtype': Input should be 'float32', 'bfloat16' or 'float16', got 'fp8'" in message


def test_union_alternatives_are_one_line_without_type_tags(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, lora={"target_modules": {"a": 1}}))
    message = recipe_error(path)
    lines = [line for line in message.splitlines() if "lora.target_modules" in line]
    assert len(lines) == 1, message
    assert "valid string" in lines[0] and "valid list" in lines[0] and "list[str]" not in lines[0]


def test_out_of_range_value_names_the_bound(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optim={"lr": 1e-4, "warmup_ratio": 1.5}))
    assert f"{path}: key 'optim.warmup_ratio': Input should be less than or equal to 1, got 1.5" in recipe_error(path)


def test_every_bad_key_is_reported_at_once(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optim={"lr": -1}, seed="x", extra=1))
    message = recipe_error(path)
    assert "'optim.lr'" in message and "'seed'" in message and "'extra'" in message


def test_missing_required_key_names_key_and_its_meaning(tmp_path):
    raw = with_(MINIMAL_SFT)
    del raw["model"]["path"]
    path = write(tmp_path, "sft.yaml", raw)
    message = recipe_error(path)
    assert f"{path}: missing required key 'model.path' (input checkpoint:" in message


def test_missing_required_key_inside_a_list_item(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, data={"train": [{"split": "train"}]}))
    assert "missing required key 'data.train.0.path'" in recipe_error(path)


def test_missing_stage(tmp_path):
    raw = with_(MINIMAL_SFT)
    del raw["stage"]
    path = write(tmp_path, "x.yaml", raw)
    assert recipe_error(path) == f"{path}: missing key 'stage' (one of dpo, rlvr, sft)"


def test_unknown_stage_suggests_the_closest(tmp_path):
    path = write(tmp_path, "x.yaml", with_(MINIMAL_SFT, stage="rvlr"))
    message = recipe_error(path)
    assert message.startswith(f"{path}: key 'stage': unknown stage schema 'rvlr'. Did you mean 'rlvr'?")


def test_stage_of_the_wrong_type(tmp_path):
    path = write(tmp_path, "x.yaml", with_(MINIMAL_SFT, stage=["sft"]))
    assert "key 'stage': expected one of dpo, rlvr, sft, got ['sft']" in recipe_error(path)


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "x.yaml", "- just\n- a list\n")
    assert recipe_error(path) == f"{path}: a recipe must be a mapping of keys, got list"


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "x.yaml", "stage: sft\noptim: {lr: [\n")
    assert recipe_error(path).startswith(f"{path}: not valid YAML")


def test_missing_recipe_file(tmp_path):
    assert recipe_error(tmp_path / "nope.yaml") == f"recipe not found: {tmp_path / 'nope.yaml'}"


# --------------------------------------------------------------------------
# Cross-field rules


def test_count_and_fraction_together_fail(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, data={"train": [{"path": "a.jsonl", "count": 5, "fraction": 0.5}]}))
    assert f"{path}: key 'data.train.0': give either count or fraction, not both" in recipe_error(path)


def test_batch_needs_exactly_one_of_tokens_and_sequences(tmp_path):
    both = write(tmp_path, "both.yaml", with_(MINIMAL_SFT, batch={"sequences": 8, "tokens": 4096}))
    raw = with_(MINIMAL_SFT)
    raw["batch"] = {"micro_batch_size": 2}
    neither = write(tmp_path, "neither.yaml", raw)
    for path in (both, neither):
        assert f"{path}: key 'batch': give exactly one of batch.tokens or batch.sequences" in recipe_error(path)


def test_offload_params_needs_zero_stage_3(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, deepspeed={"zero_stage": 2, "offload_params": True}))
    assert "key 'deepspeed': offload_params needs zero_stage 3" in recipe_error(path)
    assert load_recipe(path, ["deepspeed.zero_stage=3"]).deepspeed.offload_params is True


def test_cross_field_error_names_every_file_that_set_the_section(tmp_path):
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    message = recipe_error(path, ["batch.tokens=4096"])
    assert f"{path}, command line: key 'batch': give exactly one of" in message


def test_assignment_is_validated():
    config = SFTConfig.model_validate(MINIMAL_SFT)
    with pytest.raises(ValueError):
        config.optim.lr = -1.0


# --------------------------------------------------------------------------
# base: inheritance


def test_base_values_are_inherited_and_deeply_overridden(tmp_path):
    write(tmp_path, "common.yaml", {"seed": 7, "optim": {"lr": 1e-3, "weight_decay": 0.1}, "logging": {"every": 3}})
    child = with_(MINIMAL_SFT, base="common.yaml", optim={"lr": 2e-4})
    config = load_recipe(write(tmp_path, "sft.yaml", child))
    assert config.seed == 7
    assert config.optim.lr == 2e-4 and config.optim.weight_decay == 0.1  # merged, not replaced
    assert config.logging.every == 3


def test_lists_replace_rather_than_merge(tmp_path):
    write(tmp_path, "common.yaml", with_(MINIMAL_SFT, data={"train": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}))
    config = load_recipe(write(tmp_path, "sft.yaml", {"base": "common.yaml", "data": {"train": [{"path": "c.jsonl"}]}}))
    assert [spec.path for spec in config.data.train] == ["c.jsonl"]


def test_list_of_bases_later_wins(tmp_path):
    write(tmp_path, "a.yaml", {"seed": 1, "logging": {"every": 5}})
    write(tmp_path, "b.yaml", {"seed": 2})
    config = load_recipe(write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, base=["a.yaml", "b.yaml"])))
    assert config.seed == 2 and config.logging.every == 5


def test_bases_chain_and_resolve_relative_to_each_file(tmp_path):
    write(tmp_path, "root.yaml", {"seed": 3})
    write(tmp_path, "stages/sft_base.yaml", {"base": "../root.yaml", "optim": {"lr": 5e-4}})
    child = with_(MINIMAL_SFT, base="../stages/sft_base.yaml")
    del child["optim"]
    config = load_recipe(write(tmp_path, "think/sft.yaml", child))
    assert config.seed == 3 and config.optim.lr == 5e-4


def test_diamond_inheritance_is_not_a_cycle(tmp_path):
    write(tmp_path, "root.yaml", {"seed": 4})
    write(tmp_path, "a.yaml", {"base": "root.yaml"})
    write(tmp_path, "b.yaml", {"base": "root.yaml"})
    assert load_recipe(write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, base=["a.yaml", "b.yaml"]))).seed == 4


def test_inheritance_cycle_fails_showing_the_chain(tmp_path):
    write(tmp_path, "a.yaml", {"base": "b.yaml"})
    write(tmp_path, "b.yaml", {"base": "a.yaml"})
    message = recipe_error(tmp_path / "a.yaml")
    assert message.startswith("recipe inheritance cycle: ")
    assert "a.yaml -> " in message and "b.yaml -> " in message


def test_self_inheritance_is_a_cycle(tmp_path):
    assert recipe_error(write(tmp_path, "a.yaml", {"base": "a.yaml"})).startswith("recipe inheritance cycle")


def test_missing_base_names_the_file_that_refers_to_it(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, base="nope.yaml"))
    assert recipe_error(path) == f"{path}: key 'base': base recipe 'nope.yaml' not found (looked for {tmp_path / 'nope.yaml'})"


def test_base_of_the_wrong_type(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, base={"file": "a.yaml"}))
    assert "key 'base': expected a file name or a list of file names" in recipe_error(path)


# --------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    "item, expected",
    [
        ("optim.lr=1e-5", ("optim.lr", 1e-5)),
        ("optim.lr=0.5", ("optim.lr", 0.5)),
        ("seed=42", ("seed", 42)),
        ("lora.enabled=true", ("lora.enabled", True)),
        ("lora.enabled=False", ("lora.enabled", False)),
        ("logging.wandb_project=yes", ("logging.wandb_project", "yes")),
        ("logging.wandb_project=null", ("logging.wandb_project", None)),
        ("lora.target_modules=[q_proj, v_proj]", ("lora.target_modules", ["q_proj", "v_proj"])),
        ("model.path=runs/tiny/base", ("model.path", "runs/tiny/base")),
        ("model.path=a=b", ("model.path", "a=b")),
        ("model.path=", ("model.path", "")),
        ("model.path=[unclosed", ("model.path", "[unclosed")),
        (" seed =1", ("seed", 1)),
    ],
)
def test_override_values_parse_as_yaml(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=1", "optim.=1"])
def test_malformed_overrides(item):
    with pytest.raises(RecipeError, match="command line: override"):
        parse_override(item)


def test_overrides_apply_last_and_in_order(tmp_path):
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    config = load_recipe(path, ["optim.lr=1e-5", "optim.lr=3e-5", "lora.enabled=true", "lora.target_modules=[q_proj]"])
    assert config.optim.lr == 3e-5 and config.lora.enabled is True and config.lora.target_modules == ["q_proj"]


def test_override_creates_a_missing_section(tmp_path):
    raw = with_(MINIMAL_SFT)
    del raw["output"]
    assert load_recipe(write(tmp_path, "sft.yaml", raw), ["output.dir=elsewhere"]).output.dir == "elsewhere"


def test_override_indexes_a_list(tmp_path):
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, data={"train": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}))
    config = load_recipe(path, ["data.train.1.count=5"])
    assert config.data.train[1].count == 5 and config.data.train[0].count is None


def test_override_index_out_of_range(tmp_path):
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    assert "'data.train.3': '3' is not an index of a list of 1" in recipe_error(path, ["data.train.3.count=5"])


def test_override_number_where_text_is_expected(tmp_path):
    assert load_recipe(write(tmp_path, "sft.yaml", MINIMAL_SFT), ["model.path=2024"]).model.path == "2024"


def test_bad_override_value_is_reported_as_from_the_command_line(tmp_path):
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    message = recipe_error(path, ["optim.lr=fast"])
    assert "command line: key 'optim.lr': Input should be a valid number" in message


def test_override_replacing_a_section_takes_over_its_origin(tmp_path):
    """Keys under a section an override replaced are reported as the command line's, not the file's."""
    path = write(tmp_path, "sft.yaml", MINIMAL_SFT)
    message = recipe_error(path, ["optim={lr: -1}"])
    assert "command line: key 'optim.lr': Input should be greater than 0" in message


# --------------------------------------------------------------------------
# Writing down what ran


def test_config_hash_is_stable_and_sensitive(tmp_path):
    a = write(tmp_path, "a.yaml", MINIMAL_SFT)
    reordered = {key: MINIMAL_SFT[key] for key in reversed(list(MINIMAL_SFT))}
    b = write(tmp_path, "b.yaml", reordered)
    h = config_hash(load_recipe(a))
    assert len(h) == 16
    assert h == config_hash(load_recipe(a)) == config_hash(load_recipe(b))  # key order does not matter
    assert h == config_hash(load_recipe(a, ["optim.lr=0.0001"]))  # same value, same hash
    assert h != config_hash(load_recipe(a, ["optim.lr=2e-4"]))


def test_dumped_yaml_loads_back_to_the_same_config(tmp_path):
    config = load_recipe(write(tmp_path, "a.yaml", MINIMAL_SFT), ["optim.lr=1e-5", "logging.wandb_project=yes"])
    again = load_recipe(write(tmp_path, "resolved.yaml", dump_yaml(config)))
    assert to_dict(again) == to_dict(config)
    assert config_hash(again) == config_hash(config)


# --------------------------------------------------------------------------
# The recipes in the repository


def stage_recipes() -> list[Path]:
    """Runnable recipes: every YAML under recipes/ except bases (names starting with `_`)."""
    return sorted(p for p in RECIPES.rglob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", stage_recipes(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_loads(path):
    config = load_recipe(path)
    assert config.stage in path.stem or config.stage in str(path.parent)


def test_every_base_is_used():
    """A base (`_name.yaml`) nobody inherits is never validated: it must be someone's base."""
    used = set()
    for path in RECIPES.rglob("*.yaml"):
        bases = (yaml.safe_load(path.read_text()) or {}).get("base") or []
        used |= {(path.parent / base).resolve() for base in ([bases] if isinstance(bases, str) else bases)}
    unused = [p for p in RECIPES.rglob("_*.yaml") if p.resolve() not in used]
    assert not unused


@pytest.mark.parametrize("variant", ["think", "instruct"])
def test_tiny_recipes_chain_through_runs_tiny(variant):
    tiny = RECIPES / "tiny" / variant
    sft, dpo, rlvr = (load_recipe(tiny / f"{stage}.yaml") for stage in ("sft", "dpo", "rlvr"))
    assert (sft.variant, dpo.variant, rlvr.variant) == (variant,) * 3
    # Olmo 3: Instruct SFT starts from the Think SFT checkpoint
    assert sft.model.path == {"think": "runs/tiny/base", "instruct": "runs/tiny/think/sft/checkpoint"}[variant]
    assert dpo.model.path == f"{sft.output.dir}/checkpoint"
    assert rlvr.model.path == f"{dpo.output.dir}/checkpoint"
    assert [c.output.dir for c in (sft, dpo, rlvr)] == [f"runs/tiny/{variant}/{s}" for s in ("sft", "dpo", "rlvr")]
    assert sft.data.train[0].path == f"runs/tiny/data/sft_{variant}/train.jsonl"
    assert dpo.data.heldout[0].path == f"runs/tiny/data/dpo_{variant}/heldout.jsonl"
    assert rlvr.data.train[0].path == "runs/tiny/data/rlvr/train.jsonl"
    assert sft.distributed.num_workers == 1 and sft.data.max_length <= 512


@pytest.mark.parametrize("path", sorted((RECIPES / "tiny").rglob("[!_]*.yaml")), ids=lambda p: p.name)
def test_tiny_recipe_header_names_its_command(path):
    config = load_recipe(path)
    first = path.read_text().splitlines()[0]
    assert first == f"# posttrain {config.stage} --recipe {path.relative_to(REPO)}"


# --------------------------------------------------------------------------
# Speed: a typo fails in the first second


def test_recipe_show_fails_fast_on_a_misspelled_key(tmp_path):
    """The real console script, a fresh interpreter: the whole CLI must import without torch."""
    path = write(tmp_path, "sft.yaml", with_(MINIMAL_SFT, optim={"lr": 1e-4, "warmup_ration": 0.1}))
    script = Path(sys.executable).parent / "posttrain"
    start = time.perf_counter()
    result = subprocess.run([str(script), "recipe", "show", str(path)], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    assert "unknown key 'optim.warmup_ration'; did you mean 'optim.warmup_ratio'?" in result.stderr
    assert result.stdout == ""
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
