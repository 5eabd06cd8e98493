"""`posttrain plan`: the numbers for Olmo 3 recipes, worked out by hand, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from posttrain.cli import build_parser, main
from posttrain.commands.plan import facts
from posttrain.config import RecipeError, load_recipe
from posttrain.memory import GB, OLMO3_SHAPES, LearnerSetup, Shape, kv_bytes_per_sequence, model_states
from posttrain.plan import Assumptions, Facts, PlanError, count_parameters, make_plan, model_shape, render

REPO = Path(__file__).resolve().parent.parent
OLMO3 = REPO / "recipes" / "olmo3"
H100_AT_40 = 989e12 * 0.40  # FLOP/s per GPU under the default assumptions


def plan_command(name: str) -> list[str]:
    """The `posttrain plan ...` command on an Olmo 3 recipe's second line, as arguments after `posttrain`."""
    line = (OLMO3 / f"{name}.yaml").read_text().splitlines()[1]
    assert line.startswith("# posttrain plan "), f"recipes/olmo3/{name}.yaml: line 2 is not its plan command: {line!r}"
    return shlex.split(line.removeprefix("# posttrain "))


def recipe_facts(name: str) -> Facts:
    """The sizes the recipe's plan command gives (--parameters, --rows, --tokens)."""
    return facts(build_parser().parse_args(plan_command(name)))


def plan_of(name: str, *overrides: str, facts: dict | None = None, **assume):
    """The plan of an Olmo 3 recipe with its own plan command's sizes; `facts` replaces some of them."""
    given = dataclasses.replace(recipe_facts(name), **(facts or {}))
    return make_plan(load_recipe(OLMO3 / f"{name}.yaml", list(overrides)), name, Assumptions(**assume), given)


def refusal(name: str, *overrides: str) -> list[str]:
    with pytest.raises(PlanError) as err:
        plan_of(name, *overrides)
    return err.value.problems


# --------------------------------------------------------------------------
# Numbers checked by hand


def test_7b_think_dpo_by_hand():
    """7B Think DPO: 32 GPUs, 128 pairs of up to 16,384 tokens a side, 150K pairs, 1 epoch, N = 7.3e9.

    - nodes: 32 / 8 = 4; accumulation: 128 pairs / (32 ranks x 1) = 4
    - tokens per step <= 128 x 2 x 16,384 = 4,194,304
    - steps = ceil(150,000 / 128) = ceil(1171.875) = 1,172
    - total tokens <= 1,172 x 4,194,304 = 4,915,724,288
    - FLOPs = 8N per token (6N policy update + 2N reference forward)
            = 8 x 7.3e9 x 4,915,724,288 = 2.8708e20
    - GPU-hours = 2.8708e20 / (989e12 x 0.40) / 3600 = 201.6; wall = 201.6 / 32 = 6.30 h
    """
    plan = plan_of("7b/think/dpo")
    res = plan.resources
    assert (res.learners, res.engine_gpus, res.gpus, res.nodes) == (32, 0, 32, 4)
    assert plan.tokens_per_step == 4_194_304
    assert plan.steps == 1172
    assert plan.total_tokens == 4_915_724_288
    assert plan.gpu_hours == pytest.approx(201.58, abs=0.01)
    text = render(plan, Assumptions())
    assert "128 pairs = 32 ranks x 1 x 4 accumulation" in text
    assert "~6.3 h wall, ~202 GPU-hours" in text


def test_7b_think_rlvr_by_hand():
    """7B Think RLVR: 16 learner + 56 inference GPUs, 64 prompts x 8 samples, 1,400 steps, async.

    - nodes: 16 / 8 + 56 / 8 = 2 + 7 = 9; accumulation: 512 samples / 16 ranks = 32
    - generated per step <= 512 x 32,768 = 16,777,216; trained <= 512 x (2,048 + 32,768) = 17,825,792
    - generation: 16,777,216 / (56 GPUs x 1,000 tokens/s) = 299.6 s
    - training: 8 x 7.3e9 x 17,825,792 / (16 x 989e12 x 0.40) = 164.5 s
    - asynchronous (max_async_steps 1): a step takes the longer, 299.6 s
    - wall = 1,400 x 299.6 s = 116.5 h; GPU-hours = 116.5 x 72 = 8,389
    """
    plan = plan_of("7b/think/rlvr")
    res = plan.resources
    assert (res.learners, res.engine_gpus, res.nodes) == (16, 56, 9)
    assert plan.tokens_per_step == 17_825_792
    assert plan.steps == 1400
    generation_s = 512 * 32768 / (56 * 1000.0)
    assert generation_s == pytest.approx(299.59, abs=0.01)
    assert 8 * 7.3e9 * 17_825_792 / (16 * H100_AT_40) == pytest.approx(164.47, abs=0.01)
    assert plan.gpu_hours == pytest.approx(1400 * generation_s / 3600 * 72)
    assert plan.gpu_hours == pytest.approx(8389, abs=1)
    assert "512 samples per update = 16 ranks x 1 x 32 accumulation" in render(plan, Assumptions())


def test_colocated_7b_think_rlvr_on_one_node_by_hand():
    """recipes/examples: 8 ranks, each with an engine on its GPU, on-policy.

    - GPUs: 8 (the engines hold none of their own), 1 node
    - generation: 16,777,216 / (8 x 1,000 tokens/s) = 2,097.2 s; training: 8 x 7.3e9 x 17,825,792 / (8 x 989e12 x
      0.40) = 328.9 s; in turn: 2,426.1 s a step; GPU-hours = 1,400 x 2,426.1 / 3,600 x 8 = 7,548
    - memory at the engines' start: the learner's states beside 0.5 x 80 GB
    """
    path = REPO / "recipes" / "examples" / "olmo3-7b-think-rlvr-colocated.yaml"
    plan = make_plan(load_recipe(path), "colocated", Assumptions(), recipe_facts("7b/think/rlvr"))
    res = plan.resources
    assert (res.learners, res.engine_gpus, res.gpus, res.nodes, res.colocated) == (8, 8, 8, 1, True)
    step = 512 * 32768 / (8 * 1000.0) + 8 * 7.3e9 * 17_825_792 / (8 * H100_AT_40)
    assert step == pytest.approx(2426.1, abs=0.1)
    assert plan.gpu_hours == pytest.approx(1400 * step / 3600 * 8)
    text = render(plan, Assumptions())
    assert "8 engines on the learners' GPUs" in text and "beside the engine's 40.0 GB" in text
    with pytest.raises(PlanError, match="colocated memory"):
        make_plan(load_recipe(path, ["rollout.gpu_memory_utilization=0.85"]), "colocated", Assumptions(),
                  recipe_facts("7b/think/rlvr"))


def test_7b_think_sft_by_hand():
    """7B Think SFT: 32 GPUs, each rank one 32K sequence a step.

    - 1,048,576 tokens a step = 32 ranks x 1 x 32,768 tokens x 1 accumulation; 32 / 8 = 4 nodes
    - steps = ceil(2 epochs x 22.7e9 tokens / 1,048,576) = ceil(43,296.8) = 43,297
    - FLOPs = 6 x 7.3e9 x 43,297 x 1,048,576 = 1.988e21; GPU-hours = 1.988e21 / 3.956e14 / 3600 = 1,396
    """
    plan = plan_of("7b/think/sft")
    assert plan.resources.learners == 32 and plan.resources.nodes == 4
    assert plan.steps == 43_297
    assert plan.total_tokens == 43_297 * 2**20
    assert plan.gpu_hours == pytest.approx(6 * 7.3e9 * 43_297 * 2**20 / H100_AT_40 / 3600)
    assert round(plan.gpu_hours) == 1396


def test_32b_think_rlvr_engines_of_eight_gpus():
    """20 engines x TP 8 = 160 GPUs = 20 nodes, plus 64 learners = 8 nodes: 224 GPUs on 28 nodes."""
    res = plan_of("32b/think/rlvr").resources
    assert (res.learners, res.engine_gpus, res.gpus, res.nodes) == (64, 160, 224, 28)


def test_partial_fill_scales_bounded_lengths():
    """--fill 0.5: DPO pairs average half of max_length, so half the tokens and GPU-hours."""
    full, half = plan_of("7b/think/dpo"), plan_of("7b/think/dpo", fill=0.5)
    assert half.tokens_per_step == full.tokens_per_step // 2
    assert half.gpu_hours == pytest.approx(full.gpu_hours / 2)
    assert "about 2,097,152" in render(half, Assumptions(fill=0.5))


def test_gpus_per_node_changes_the_node_count():
    assert plan_of("7b/think/sft", facts={"gpus_per_node": 4}).resources.nodes == 8


def test_without_the_sizes_the_plan_says_what_to_give():
    """No --parameters: no GPU-hours; no --tokens: no SFT step count; no --rows and no local data: no DPO one."""
    sft = plan_of("7b/think/sft", facts={"parameters": None, "tokens": None})
    assert sft.steps is None and sft.gpu_hours is None
    text = render(sft, Assumptions())
    assert "parameter count unknown: give --parameters" in text
    assert "unknown: give --tokens (tokens a pass over the mixture) or set optim.max_steps" in text
    dpo = plan_of("7b/think/dpo", facts={"rows": None})
    assert dpo.steps is None and "unknown: give --rows (pairs in the mixture)" in render(dpo, Assumptions())
    rlvr = plan_of("7b/think/rlvr", facts={"parameters": None})
    assert rlvr.gpu_hours is None and "not estimated: give --parameters" in render(rlvr, Assumptions())


@pytest.mark.parametrize("name", sorted(str(p.relative_to(OLMO3).with_suffix("")) for p in OLMO3.rglob("[!_]*.yaml")))
def test_every_olmo3_recipe_adds_up(name):
    plan = plan_of(name)
    assert plan.steps and plan.total_tokens and plan.gpu_hours and plan.resources.gpus


# --------------------------------------------------------------------------
# Refusals: each names what does not add up


def test_refuses_learners_that_do_not_fill_nodes():
    problems = refusal("7b/think/dpo", "distributed.num_workers=12")
    assert "learner GPUs (distributed.num_workers): 12 GPUs do not fill whole nodes of 8 (--gpus-per-node)" in problems
    assert "batch.sequences (128) is not a multiple of data-parallel ranks x batch.micro_batch_size (12 x 1 = 12)" in problems


def test_refuses_tensor_parallel_wider_than_a_node():
    problems = refusal("32b/think/rlvr", "rollout.tensor_parallel_size=16")
    assert problems == ["rollout.tensor_parallel_size (16) is larger than a node (8 GPUs, --gpus-per-node)"]


def test_refuses_engines_that_straddle_nodes():
    problems = refusal("32b/think/rlvr", "rollout.tensor_parallel_size=3")
    assert "rollout.tensor_parallel_size (3) does not divide a node of 8 GPUs: an engine would straddle two nodes" in problems
    assert "inference GPUs (rollout.num_engines x tensor_parallel_size): 60 GPUs do not fill whole nodes of 8 (--gpus-per-node)" in problems


def test_refuses_pairs_not_divisible_by_ranks_times_micro_batch():
    assert refusal("7b/think/dpo", "batch.micro_batch_size=3") == [
        "batch.sequences (128) is not a multiple of data-parallel ranks x batch.micro_batch_size (32 x 3 = 96)"
    ]


def test_refuses_token_batch_that_is_not_whole_sequences():
    assert refusal("7b/think/sft", "batch.tokens=1000000") == [
        "batch.tokens (1,000,000) is not a multiple of data-parallel ranks x batch.micro_batch_size x data.max_length"
        " (32 x 1 x 32,768 = 1,048,576)"
    ]


def test_refuses_sft_ranks_that_would_get_no_row():
    """64 ranks of one 32K row each would need 2M tokens a step; the 1M step holds 32 rows."""
    assert refusal("7b/think/sft", "distributed.num_workers=64") == [
        "batch.tokens (1,048,576) is not a multiple of data-parallel ranks x batch.micro_batch_size x data.max_length"
        " (64 x 1 x 32,768 = 2,097,152)"
    ]


@pytest.mark.parametrize("override, message", [
    ("grpo.minibatches=3", "grpo.prompts_per_step x samples_per_prompt (512) is not divisible by grpo.minibatches (3)"),
    ("batch.sequences=256", "batch.sequences (256) must be grpo.prompts_per_step x samples_per_prompt / grpo.minibatches = 512"),
])
def test_rl_batches_that_do_not_divide_are_refused_by_the_recipe_before_planning(override, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        plan_of("7b/think/rlvr", override)


def test_refuses_rl_minibatch_not_divisible_by_learners():
    assert refusal("7b/instruct/rlvr", "distributed.num_workers=6") == [
        "batch.sequences (128) is not a multiple of data-parallel ranks x batch.micro_batch_size (6 x 1 = 6)"
    ]


# --------------------------------------------------------------------------
# What the plan reads besides the recipe


def test_counts_rows_of_local_jsonl_and_parameters_of_a_local_checkpoint(tmp_path):
    """A CPU DPO recipe on 10 local pairs, 4 a step, 2 epochs: ceil(20 / 4) = 5 steps; no GPU estimate."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(10)) + "\n")  # a trailing blank line is not a row
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    config = load_recipe(
        REPO / "recipes/tiny/think/dpo.yaml",
        [f"data.train=[{{path: {data}}}]", f"model.path={model}", "batch.sequences=4", "batch.micro_batch_size=2", "optim.epochs=2"],
    )
    plan = make_plan(config, "tiny dpo")
    assert plan.steps == 5
    assert plan.gpu_hours is None
    text = render(plan, Assumptions())
    assert "(87K parameters)" in text
    assert "not estimated: a CPU run" in text and "assumptions" not in text


TINY_CONFIG = {
    "model_type": "olmo3",
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
# head_dim 16; per layer: q, o 2 x 64 x 64 = 8,192; k, v 2 x 64 x 32 = 4,096; MLP 3 x 64 x 128 = 24,576;
# norms 2 x 64 + 64 (q norm) + 32 (k norm) = 224 -> 37,088; x 2 layers = 74,176;
# embeddings in and out 2 x 100 x 64 = 12,800; final norm 64: 87,040
TINY_PARAMS = 87_040


def test_count_parameters_by_hand():
    assert count_parameters(TINY_CONFIG) == TINY_PARAMS
    assert count_parameters({**TINY_CONFIG, "tie_word_embeddings": True}) == TINY_PARAMS - 6_400


@pytest.mark.slow
def test_count_parameters_matches_transformers_olmo3():
    """The same config built by transformers (on the meta device: no memory) has exactly that many weights."""
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM

    config = Olmo3Config(**{k: v for k, v in TINY_CONFIG.items() if k != "model_type"})
    with torch.device("meta"):
        model = Olmo3ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(TINY_CONFIG)


SHAPES = {  # the published shapes (7B: MLP 11,008; 32B: MLP 27,648, 8 KV heads)
    "7b": {"vocab_size": 100_278, "hidden_size": 4096, "intermediate_size": 11_008, "num_hidden_layers": 32,
           "num_attention_heads": 32},
    "32b": {"vocab_size": 100_278, "hidden_size": 5120, "intermediate_size": 27_648, "num_hidden_layers": 64,
            "num_attention_heads": 40, "num_key_value_heads": 8},
}


@pytest.mark.parametrize("name", sorted(str(p.relative_to(OLMO3).with_suffix("")) for p in OLMO3.rglob("[!_]*.yaml")))
def test_olmo3_plan_commands_give_parameter_counts_that_follow_the_architecture(name):
    """Each recipe's plan command names that recipe and gives its size's parameter count, within 1%."""
    assert plan_command(name)[:2] == ["plan", f"recipes/olmo3/{name}.yaml"]
    shape = SHAPES[name.split("/")[0]]
    assert recipe_facts(name).parameters == pytest.approx(count_parameters(shape), rel=0.01)


# --------------------------------------------------------------------------
# Memory per GPU

SHAPE_7B, SHAPE_32B = Shape.from_hf(OLMO3_SHAPES["7b"]), Shape.from_hf(OLMO3_SHAPES["32b"])


def setup_7b(**changes) -> LearnerSetup:
    base = dict(params=7_300_000_000, ranks=16, dtype_bytes=2, zero_stage=0, offload_optimizer=False,
                offload_params=False, overlap_comm=True, reduce_bucket=2**24, allgather_bucket=2**24,
                prefetch_bucket=15_099_494, checkpointing=True, micro_batch=1, item_tokens=32_768, loss_chunk=4096)
    return LearnerSetup(**{**base, **changes})


@pytest.mark.parametrize("stage, weights, gradients, adamw", [
    (0, 14.6, 14.6, 87.6),  # bf16 weights 2N, gradients 2N, AdamW 12N (fp32 master 4N + 2 moments 8N), N = 7.3e9
    (1, 14.6, 14.6, 5.475),  # the optimizer state over 16 ranks: 87.6 / 16
    (2, 14.6, 0.9125, 5.475),  # and the gradients: 14.6 / 16
    (3, 0.9125, 0.9125, 5.475),  # and the weights
])
def test_zero_stages_shard_7b_states_over_16_ranks(stage, weights, gradients, adamw):
    states = model_states(setup_7b(zero_stage=stage))
    assert [states[k] / GB for k in ("weights", "gradients", "AdamW")] == pytest.approx([weights, gradients, adamw])


def test_offload_takes_states_off_the_gpu_and_fp32_has_no_master_copy():
    assert model_states(setup_7b(zero_stage=3, offload_optimizer=True, offload_params=True)) == pytest.approx(
        {"weights": 0.0, "gradients": 0.9125 * GB, "AdamW": 0.0})
    fp32 = model_states(setup_7b(dtype_bytes=4))  # weights 4N = 29.2 GB, gradients 4N, AdamW only the moments 8N
    assert [fp32[k] / GB for k in ("weights", "gradients", "AdamW")] == pytest.approx([29.2, 29.2, 58.4])


def test_7b_think_sft_learner_memory_by_hand():
    """ZeRO-2 over 32 ranks, one 32,768-token sequence, checkpointed, buckets of 4096^2, loss chunks of 4,096.

    - weights 2 x 7.3e9 = 14.6 GB; gradients 14.6 / 32 = 0.456; AdamW 12 x 7.3e9 / 32 = 2.738
    - buckets (reduce + allgather) 2 x 16,777,216 x 2 bytes x 4.5 (overlap_comm) = 0.302
    - activations: each layer's input 32 x 32,768 x 4,096 x 2 = 8.590; one layer whole
      32,768 x 2 x (8 x 4,096 + 4 x 4,096 + 4 x 11,008) = 6.107; 14.697 in all
    - loss: 4,096 x 100,278 x 4 bytes x 5 = 8.215
    - total 41.01 GB, under the 72 GB allowed on an 80 GB H100
    """
    text = render(plan_of("7b/think/sft"), Assumptions())
    assert "learner memory   41.0 GB per GPU, of 72 GB allowed (90% of the H100's 80 GB)" in text
    assert ("weights 14.6, gradients 0.5, AdamW 2.7, ZeRO buffers 0.3, activations 14.7, loss 8.2 GB"
            " (ZeRO-2 over 32 ranks, 1 x 32,768 tokens a forward pass)") in text


def test_sliding_window_layers_hold_at_most_the_window():
    """7B, one 34,816-token sequence (prompt 2,048 + response 32,768), one GPU per engine.

    K and V per token and layer: 2 x 32 heads x 128 x 2 bytes = 16,384. The 8 full-attention layers hold
    all 34,816 tokens, the 24 sliding ones 4,096: (8 x 34,816 + 24 x 4,096) x 16,384 = 6,174,015,488 bytes,
    against 32 x 34,816 x 16,384 = 18.25 GB were every layer full. 32B at tensor parallel 8: one of its 8
    KV heads per GPU, 2 x 1 x 128 x 2 = 512 bytes: (16 x 34,816 + 48 x 4,096) x 512 = 385,875,968.
    The 7B engine: 0.9 x 80 GB - 14.6 GB of weights = 57.4 GB of KV cache, 9 such sequences.
    """
    assert kv_bytes_per_sequence(SHAPE_7B, 34_816, 1) == 6_174_015_488
    assert kv_bytes_per_sequence(dataclasses.replace(SHAPE_7B, sliding_layers=0), 34_816, 1) == 32 * 34_816 * 16_384
    assert kv_bytes_per_sequence(SHAPE_32B, 34_816, 8) == 385_875_968
    text = render(plan_of("7b/think/rlvr"), Assumptions())
    assert "engine memory     72.0 GB per GPU (0.9 of the H100's 80 GB): weights 14.6, KV cache 57.4 GB" in text
    assert "9 sequences of 34,816 tokens at once (6.17 GB each; 24 of 32 layers hold at most 4,096 tokens)" in text


@pytest.mark.parametrize("name, override, first_fix", [
    ("32b/think/sft", "deepspeed.zero_stage=2", "raise deepspeed.zero_stage to 3 (-67.3 GB)"),
    ("7b/think/sft", "model.gradient_checkpointing=false", "turn on model.gradient_checkpointing (-180.7 GB)"),
    ("7b/think/dpo", "batch.micro_batch_size=4", "lower batch.micro_batch_size"),
])
def test_a_learner_that_does_not_fit_is_refused_naming_the_fix(name, override, first_fix):
    overrides = [override, "batch.sequences=512"] if "micro_batch" in override else [override]
    [problem] = refusal(name, *overrides)
    assert re.match(r"learner memory: [\d.]+ GB per GPU is over 90% of the H100's 80 GB: ", problem)
    assert problem.split(": ", 2)[2].startswith(first_fix)


def test_an_engine_whose_weights_leave_no_room_is_refused_naming_the_fix():
    """32B on one GPU per engine: 64.4 GB of weights in 0.8 x 80 = 64 GB leave no KV cache."""
    assert refusal("32b/think/rlvr", "rollout.tensor_parallel_size=1", "rollout.num_engines=160",
                   "rollout.gpu_memory_utilization=0.8") == [
        "engine memory: the weights (64.4 GB per GPU) leave no room for one sequence of 34,816 tokens in 0.8 of the"
        " H100's 80 GB: raise rollout.tensor_parallel_size; raise rollout.gpu_memory_utilization"
    ]


def test_a_bigger_gpu_fits_what_a_smaller_one_refuses():
    assert refusal("32b/think/sft", "deepspeed.zero_stage=2")
    plan = plan_of("32b/think/sft", "deepspeed.zero_stage=2", facts={"gpu": "h200"})
    assert "of 127 GB allowed (90% of the H200's 141 GB)" in render(plan, Assumptions())


def test_the_shape_comes_from_a_local_checkpoint_then_shape_then_parameters(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    layer_types = ["sliding_attention", "full_attention"]
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, "sliding_window": 16, "layer_types": layer_types}))
    config = load_recipe(REPO / "recipes/tiny/think/dpo.yaml", [f"model.path={model}"])
    assert model_shape(config) == Shape(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                                        vocab=100, sliding_layers=1, sliding_window=16)
    olmo = load_recipe(OLMO3 / "7b/think/dpo.yaml")
    assert model_shape(olmo, Facts(shape="32b")) == SHAPE_32B
    assert model_shape(olmo, Facts(parameters=int(7.3e9))) == SHAPE_7B  # within 10% of 7.30B
    assert model_shape(olmo, Facts(parameters=int(1e9))) is None
    text = render(plan_of("7b/think/dpo", facts={"parameters": int(1e9)}), Assumptions())
    assert re.search(r"\n  memory +not estimated: give --shape \(7b, 32b\) or --parameters near one\n", text)


@pytest.mark.parametrize("name", sorted(str(p.relative_to(OLMO3).with_suffix("")) for p in OLMO3.rglob("[!_]*.yaml")))
def test_every_olmo3_recipe_fits_the_default_gpu(name, capsys, monkeypatch):
    """The recipe's own plan command (line 2), run through the CLI, prints its memory and exits 0."""
    monkeypatch.chdir(REPO)
    assert main(plan_command(name)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "learner memory" in out and "of 72 GB allowed (90% of the H100's 80 GB)" in out
    assert ("engine memory" in out) == name.endswith("rlvr")


# --------------------------------------------------------------------------
# The command


def test_cli_prints_the_plan(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's plan command names it from the repository root
    assert main(plan_command("32b/think/rlvr")) == 0
    out = capsys.readouterr().out
    assert "inference         160 GPUs (20 nodes): 20 engines x tensor parallel 8" in out
    assert "224 GPUs on 28 node(s) of 8" in out
    assert "assumptions:" in out and "989 TFLOP/s" in out


def test_cli_refuses_with_exit_2_naming_the_problem(capsys):
    assert main(["plan", str(OLMO3 / "7b/think/dpo.yaml"), "distributed.num_workers=12"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "7b/think/dpo.yaml: the resources do not add up:" in captured.err
    assert "12 GPUs do not fill whole nodes of 8 (--gpus-per-node)" in captured.err


def test_cli_assumption_options_change_the_estimate(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main([*plan_command("7b/think/dpo"), "--mfu", "0.2"]) == 0
    assert "~403 GPU-hours" in capsys.readouterr().out  # twice the 201.6 at 40%


def test_cli_size_options_change_the_plan(capsys):
    """--rows 300000 doubles 7B Think DPO's 150K pairs: 2,344 steps; --gpus-per-node 4: its 32 GPUs on 8 nodes."""
    recipe = str(OLMO3 / "7b/think/dpo.yaml")
    assert main(["plan", recipe, "--parameters", "7.3e9", "--rows", "300000", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "2,344 (1 epoch(s) x 300,000 pairs / 128)" in out
    assert "32 GPUs on 8 node(s) of 4" in out


def test_cli_rejects_bad_recipe_and_bad_option(capsys):
    assert main(["plan", str(OLMO3 / "7b/think/dpo.yaml"), "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    assert main(["plan", str(OLMO3 / "7b/think/dpo.yaml"), "--mfu", "0"]) == 2
    assert "--mfu must be positive" in capsys.readouterr().err
    for bad in (["--parameters", "0"], ["--rows", "1.5"], ["--gpus-per-node", "eight"]):
        with pytest.raises(SystemExit) as exit_:
            main(["plan", str(OLMO3 / "7b/think/dpo.yaml"), *bad])
        assert exit_.value.code == 2
        assert f"argument {bad[0]}:" in capsys.readouterr().err


def test_a_served_judge_adds_its_gpus_and_node():
    """7B Think RLVR with a 4-GPU judge: 72 + 4 = 76 GPUs held throughout, on 9 + 1 = 10 nodes."""
    plain, judged = plan_of("7b/think/rlvr"), plan_of("7b/think/rlvr", "judge.model=Qwen/Qwen3-32B", "judge.num_gpus=4")
    assert (judged.resources.judge_gpus, judged.resources.gpus, judged.resources.nodes) == (4, 76, 10)
    assert judged.gpu_hours == pytest.approx(plain.gpu_hours * 76 / 72)
    assert "4 GPUs (part of a node): Qwen/Qwen3-32B served by vLLM" in render(judged, Assumptions())
