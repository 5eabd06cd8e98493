"""The Olmo 3 recipes carry the published settings.

`PUBLISHED` transcribes the published settings (the Olmo 3 technical
report, arXiv 2512.13961, and AllenAI's scripts): one row per value per recipe.
A "Common" value of a stage is one row for each recipe of that stage. Each row
is its own test, so a failure names the recipe, the key, the recipe's value and
the published one.

Not in the table: 7B RL-Zero (no recipe here), reward-domain sizes and
evaluation results (not recipe values), and every "n/p" cell (the recipe
inherits a value, and a comment there says so).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from posttrain.cli import build_parser
from posttrain.config import load_recipe

REPO = Path(__file__).resolve().parent.parent
OLMO3 = REPO / "recipes" / "olmo3"
SIZES, VARIANTS, STAGES = ("7b", "32b"), ("think", "instruct"), ("sft", "dpo", "rlvr")
RECIPES = [f"{size}/{variant}/{stage}" for size in SIZES for variant in VARIANTS for stage in STAGES]
M = 2**20  # "1M tokens": OLMo-core counts the batch in powers of two (1,048,576)


@dataclass(frozen=True)
class Between:
    """A value published as a range, e.g. "64-128" GPUs."""

    low: float
    high: float

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, (int, float)) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"{self.low:g}-{self.high:g}"


# Values that are not one recipe key.
DERIVED: dict[str, Callable] = {
    "inference GPUs": lambda c: c.rollout.num_engines * c.rollout.tensor_parallel_size,
    "samples per step": lambda c: c.grpo.prompts_per_step * c.grpo.samples_per_prompt,
    "first dataset": lambda c: c.data.train[0].path,
}


def common(stage: str, key: str, value: Any) -> list[tuple[str, str, Any]]:
    """One row per size and variant for a value every recipe of `stage` shares."""
    return [(f"{size}/{variant}/{stage}", key, value) for size in SIZES for variant in VARIANTS]


def columns(stage: str, key: str, **by_column: Any) -> list[tuple[str, str, Any]]:
    """One row per published column (7b_think=..., 32b_instruct=...); n/p columns are left out."""
    return [(f"{column.replace('_', '/', 1)}/{stage}", key, value) for column, value in by_column.items()]


PUBLISHED: list[tuple[str, str, Any]] = [
    # --- Models: hub names of the bases
    ("7b/think/sft", "model.path", "allenai/Olmo-3-1025-7B"),
    ("32b/think/sft", "model.path", "allenai/Olmo-3-1125-32B"),
    # --- SFT, common: AdamW (0.9, 0.95), wd 0, linear 3% warmup to 0, clip 1.0, packed, 2 epochs, 32K
    *common("sft", "optim.betas", (0.9, 0.95)),
    *common("sft", "optim.weight_decay", 0.0),
    *common("sft", "optim.schedule", "linear"),
    *common("sft", "optim.warmup_ratio", 0.03),
    *common("sft", "optim.max_grad_norm", 1.0),
    *common("sft", "sft.packing", True),
    *common("sft", "optim.epochs", 2),
    *common("sft", "data.max_length", 32768),
    # --- SFT, by column
    *columns("sft", "optim.lr", **{"7b_think": 5e-5, "7b_instruct": 8e-5, "32b_think": 1e-4, "32b_instruct": 8e-5}),
    *columns("sft", "batch.tokens", **{"7b_think": 1 * M, "7b_instruct": 1 * M, "32b_think": 4 * M, "32b_instruct": 4 * M}),
    # Think: published as 64 and 256 GPUs, two per 32K sequence (context parallelism), which the learners do not
    # do; those recipes give each of 32 and 128 ranks one sequence (their headers say so)
    *columns("sft", "distributed.num_workers", **{"7b_instruct": 32, "32b_instruct": 64}),
    *columns("sft", "model.path", **{"7b_instruct": "runs/olmo3/7b/think/sft/checkpoint", "32b_instruct": "runs/olmo3/32b/think/sft/checkpoint"}),
    *columns(
        "sft",
        "first dataset",
        **{
            "7b_think": "allenai/Dolci-Think-SFT-7B",
            "7b_instruct": "allenai/Dolci-Instruct-SFT",
            "32b_think": "allenai/Dolci-Think-SFT-32B",
            "32b_instruct": "allenai/Dolci-Instruct-SFT",
        },
    ),
    # prompts: ~2.27M, 2,152,112, ~2.25M; tokens a pass (Table 47: 45.4B, 3.4B, 45.2B over 2 epochs); 32B Instruct: n/p
    *columns("sft", "plan --rows", **{"7b_think": Between(2.265e6, 2.275e6), "7b_instruct": 2152112, "32b_think": Between(2.245e6, 2.255e6)}),
    *columns("sft", "plan --tokens", **{"7b_think": 22.7e9, "7b_instruct": 1.7e9, "32b_think": 22.6e9}),
    # --- DPO, common: dpo_norm, beta 5, 1 epoch, linear, warmup 0.1, wd 0, 128 pairs
    *common("dpo", "dpo.loss", "dpo_norm"),
    *common("dpo", "dpo.beta", 5.0),
    *common("dpo", "optim.epochs", 1),
    *common("dpo", "optim.schedule", "linear"),
    *common("dpo", "optim.warmup_ratio", 0.1),
    *common("dpo", "optim.weight_decay", 0.0),
    *common("dpo", "batch.sequences", 128),
    # --- DPO, by column
    *columns("dpo", "optim.lr", **{"7b_think": 8e-8, "7b_instruct": 1e-6, "32b_think": 7e-8, "32b_instruct": 1e-6}),
    *columns("dpo", "plan --rows", **{"7b_think": 150_000, "7b_instruct": 260_000, "32b_think": 200_000}),
    *columns("dpo", "data.max_length", **{"7b_think": 16384, "7b_instruct": 16384, "32b_think": 8192, "32b_instruct": 8192}),
    *columns("dpo", "distributed.num_workers", **{"7b_think": 32, "7b_instruct": 16, "32b_think": Between(64, 128), "32b_instruct": 64}),
    *columns("dpo", "first dataset", **{"7b_think": "allenai/Dolci-Think-DPO-7B", "7b_instruct": "allenai/Dolci-Instruct-DPO", "32b_think": "allenai/Dolci-Think-DPO-32B"}),
    # --- RLVR, common (OlmoRL)
    *common("rlvr", "grpo.kl_coef", 0.0),
    *common("rlvr", "grpo.loss_aggregation", "token"),
    *common("rlvr", "grpo.eps_low", 0.2),
    *common("rlvr", "grpo.eps_high", 0.272),
    *common("rlvr", "grpo.advantage", "group_mean"),
    *common("rlvr", "grpo.filter_equal_groups", True),
    *common("rlvr", "rollout.temperature", 1.0),
    *common("rlvr", "optim.schedule", "constant"),
    *common("rlvr", "rollout.max_prompt_length", 2048),
    *common("rlvr", "rollout.engine", "vllm"),
    # --- RLVR, by column (32B Instruct: n/p)
    *columns("rlvr", "plan --rows", **{"7b_think": 104_869, "7b_instruct": 171_950, "32b_think": 104_869}),
    *columns("rlvr", "optim.lr", **{"7b_think": 1e-6, "7b_instruct": 1e-6, "32b_think": 2e-6}),
    *columns("rlvr", "grpo.steps", **{"7b_think": 1400, "7b_instruct": 450, "32b_think": 750}),
    *columns("rlvr", "grpo.prompts_per_step", **{"7b_think": 64, "7b_instruct": 64, "32b_think": 128}),
    *columns("rlvr", "grpo.samples_per_prompt", **{"7b_think": 8, "7b_instruct": 8, "32b_think": 8}),
    *columns("rlvr", "samples per step", **{"7b_think": 512, "7b_instruct": 512, "32b_think": 1024}),
    *columns("rlvr", "grpo.minibatches", **{"7b_think": 1, "7b_instruct": 4, "32b_think": 1}),
    *columns("rlvr", "rollout.max_response_length", **{"7b_think": 32768, "7b_instruct": 8192, "32b_think": 32768}),
    *columns("rlvr", "grpo.truncated_is_cap", **{"7b_think": None, "7b_instruct": None, "32b_think": 2.0}),
    *columns("rlvr", "grpo.max_async_steps", **{"7b_think": 1, "7b_instruct": 8, "32b_think": 8}),
    *columns("rlvr", "distributed.num_workers", **{"7b_think": 16, "7b_instruct": 8, "32b_think": 64}),
    *columns("rlvr", "inference GPUs", **{"7b_think": 56, "7b_instruct": 56, "32b_think": 160}),
    *columns("rlvr", "rollout.tensor_parallel_size", **{"7b_think": 1, "7b_instruct": 1, "32b_think": 8}),
    *columns("rlvr", "first dataset", **{"7b_think": "allenai/Dolci-Think-RL-7B", "7b_instruct": "allenai/Dolci-Instruct-RL", "32b_think": "allenai/Dolci-Think-RL-32B"}),
    # 32B Think refilled batches by active sampling (7B Think's offline pass-rate filter is not done here: its
    # recipe says so)
    ("32b/think/rlvr", "grpo.active_sampling", True),
    # every recipe runs on GPUs
    *[(recipe, "distributed.use_gpu", True) for recipe in RECIPES],
]

_loaded: dict[str, Any] = {}


def recipe(name: str):
    if name not in _loaded:
        _loaded[name] = load_recipe(OLMO3 / f"{name}.yaml")
    return _loaded[name]


def plan_size(name: str, option: str) -> Any:
    """A size given by the recipe's plan command (its second line), e.g. plan_size(name, "--rows")."""
    line = (OLMO3 / f"{name}.yaml").read_text().splitlines()[1]
    args = build_parser().parse_args(shlex.split(line.removeprefix("# posttrain ")))
    return getattr(args, option.removeprefix("--"))


def value_of(name: str, config, key: str) -> Any:
    if key.startswith("plan "):  # "plan --rows": not a recipe key (no stage reads it), a `posttrain plan` option
        return plan_size(name, key.split()[1])
    if key in DERIVED:
        return DERIVED[key](config)
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize(("name", "key", "published"), PUBLISHED, ids=[f"{name}:{key}" for name, key, _ in PUBLISHED])
def test_recipe_value_matches_published(name, key, published):
    actual = value_of(name, recipe(name), key)
    assert actual == published, f"recipes/olmo3/{name}.yaml: {key} is {actual!r}; published: {published!r}"


def test_table_covers_every_recipe_and_only_real_recipes():
    named = {name for name, _, _ in PUBLISHED}
    assert named == set(RECIPES)
    on_disk = {str(p.relative_to(OLMO3).with_suffix("")) for p in OLMO3.rglob("[!_]*.yaml")}
    assert on_disk == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_header_names_the_command(name):
    path = OLMO3 / f"{name}.yaml"
    first = path.read_text().splitlines()[0]
    assert first == f"# posttrain {recipe(name).stage} --recipe {path.relative_to(REPO)}"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_its_variant_and_writes_its_own_run_dir(name):
    config = recipe(name)
    size, variant, stage = name.split("/")
    assert (config.stage, config.variant) == (stage, variant)
    assert config.output.dir == f"runs/olmo3/{name}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_stage_starts_from_the_previous_one(size, variant):
    sft, dpo, rlvr = (recipe(f"{size}/{variant}/{stage}") for stage in STAGES)
    assert dpo.model.path == f"{sft.output.dir}/checkpoint"
    assert rlvr.model.path == f"{dpo.output.dir}/checkpoint"


@pytest.mark.parametrize("size", SIZES)
def test_instruct_sft_starts_from_the_think_sft_checkpoint(size):
    assert recipe(f"{size}/instruct/sft").model.path == f"{recipe(f'{size}/think/sft').output.dir}/checkpoint"


@pytest.mark.parametrize("name", [r for r in RECIPES if r.endswith("rlvr")])
def test_rl_batch_is_one_minibatch_of_samples(name):
    """batch.sequences is what one optimizer update sees: prompts x samples / minibatches."""
    grpo, batch = recipe(name).grpo, recipe(name).batch
    assert batch.sequences * grpo.minibatches == grpo.prompts_per_step * grpo.samples_per_prompt


def test_between_is_inclusive_and_rejects_non_numbers():
    assert Between(64, 128) == 64 and Between(64, 128) == 128 and Between(64, 128) == 96
    assert Between(64, 128) != 32 and Between(64, 128) != "64"
