"""Each stage of the tiny chains, run by its recipes as shipped, learns what its recipe is for.

The chains (`think_chain`, `instruct_chain` in tests/conftest.py) run SFT, DPO and RLVR through the real CLI and
score every checkpoint on the same held-out suite (`posttrain.eval.heldout`, the whole held-out split: greedy pass@1
on 200 RLVR prompts the chain never trained on and the recipes were never tuned on (they were tuned on the tiny
data's dev split), the format rate, the preference accuracy on 300 held-out pairs).

Float results differ between CPU types and a chain of training stages is chaotic, so the same seeds give another
chain on another machine. Each threshold below is therefore set under the worst case measured over several data
draws and seeds of the whole chain (`data.seed`, `seed`), with a margin, and every measured value is printed in the
run's learning summary (tests/conftest.py), so a machine where a stage learns less shows by how much.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.checkpoints import EXPORT_DIR, MANIFEST, read_json
from posttrain.data.chat import generation_prompt, is_well_formed, split_think
from posttrain.eval.heldout import EVAL_FILE
from posttrain.metrics import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VARIANTS = ("think", "instruct")

# Thresholds (see the module docstring for how they were set).
SFT_WELL_FORMED_MIN = 0.85  # greedy answers to held-out SFT prompts in the variant's shape (the base: none)
DPO_PREF_ACC_MIN = 0.9  # held-out preference accuracy after DPO (all held-out pairs)
DPO_PREF_ACC_GAIN_MIN = 0.05  # ... over the SFT checkpoint's
RLVR_TRAIN_REWARD_GAIN_MIN = 0.03  # mean training reward, last third of the steps over the first third
RLVR_HELDOUT_GAIN_MIN = 0.05  # held-out pass@1, RLVR checkpoint over DPO's, mean of both variants
CHAIN_OVER_SFT_MIN = 0.0  # held-out pass@1, the chain's last checkpoint over its SFT checkpoint, mean of both


def suite(chain: Path) -> dict:
    """{checkpoint name: metrics} of the chain's held-out suite."""
    return {name: result["metrics"] for name, result in read_json(chain / EVAL_FILE)["results"].items()}


# ---------------------------------------------------------------- SFT


def well_formed(text: str, style: str, needs_box: bool) -> bool:
    """Think: one think block, then an answer; Instruct: no think block. `\\boxed{}` where the task asks for it."""
    if not is_well_formed(text, style):
        return False
    return "\\boxed{" in split_think(text)[1] if needs_box else True


def generate(checkpoint: Path, conversations: list[list[dict]], max_new_tokens: int, batch: int = 64) -> list[str]:
    """Greedy completions from a saved checkpoint, prompts rendered by its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    prompts = [tokenizer.apply_chat_template(c[:-1], add_generation_prompt=True, tokenize=False)
               for c in conversations]
    assert prompts[0] == generation_prompt(conversations[0])  # the saved template renders what training saw
    texts = []
    for start in range(0, len(prompts), batch):
        encoded = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, encoded["input_ids"].shape[1]:]
        texts += [t.split("<|im_end|>")[0] for t in tokenizer.batch_decode(new, skip_special_tokens=False)]
    return texts


def format_rate(checkpoint: Path, heldout: Path, style: str, limit: int = 300) -> tuple[float, list[str]]:
    """Share of greedy answers to the held-out SFT prompts in the variant's shape, and a few that are not."""
    rows = [json.loads(line) for line in heldout.read_text().splitlines() if line.strip()][:limit]
    conversations = [row["messages"] for row in rows]
    needs_box = ["\\boxed{" in c[-1]["content"] for c in conversations]
    longest = max(len(c[-1]["content"]) for c in conversations)  # characters bound tokens from above
    texts = generate(checkpoint, conversations, max_new_tokens=min(longest // 2 + 32, 384))
    good = [well_formed(t, style, box) for t, box in zip(texts, needs_box)]
    return sum(good) / len(good), [t for t, ok in zip(texts, good) if not ok][:5]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sft_teaches_the_format(variant, chain, tiny_dir, record):
    rate, bad = format_rate(chain / "sft" / EXPORT_DIR, tiny_dir / "data" / f"sft_{variant}" / "heldout.jsonl", variant)
    results = suite(chain)
    record(f"{variant} SFT: held-out answers well-formed", rate, SFT_WELL_FORMED_MIN)
    assert rate >= SFT_WELL_FORMED_MIN, f"{variant}: {rate:.1%} well-formed; e.g. {bad}"
    # on the RLVR prompts too: the variant's shape is far more common after SFT than before
    assert results["sft"]["format"] > results["input"]["format"] + 0.2
    losses = [r["loss"] for r in read_metrics(chain / "sft") if "loss" in r]
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- DPO


@pytest.mark.parametrize("variant", VARIANTS)
def test_dpo_raises_heldout_preference_accuracy(variant, chain, record):
    """The stage's own measurement on all held-out pairs before and after, and the suite's on the checkpoints."""
    run = chain / "dpo"
    metrics = read_json(run / MANIFEST)["metrics"]
    before, after = metrics["heldout_pref_acc_before"], metrics["heldout_pref_acc"]
    record(f"{variant} DPO: held-out preference accuracy", after, DPO_PREF_ACC_MIN)
    record(f"{variant} DPO: held-out preference accuracy gain ({before:.3f} -> {after:.3f})", after - before,
           DPO_PREF_ACC_GAIN_MIN)
    assert after >= DPO_PREF_ACC_MIN and after - before >= DPO_PREF_ACC_GAIN_MIN, (before, after)
    assert metrics["heldout_reward_margin"] > 0
    results = suite(chain)
    assert results["dpo"]["pref_acc"] > results["sft"]["pref_acc"]
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses[-1] < losses[0] < 0.7  # starts near log 2 and falls
    assert (run / "plots" / "loss.png").is_file() and (run / "plots" / "accuracy.png").is_file()


# ---------------------------------------------------------------- RLVR


@pytest.mark.parametrize("variant", VARIANTS)
def test_rlvr_raises_the_training_reward(variant, chain, record):
    """The mean verifier score of the sampled responses, over the first and the last third of the steps."""
    steps = [r["reward/mean"] for r in read_metrics(chain / "rlvr") if "reward/mean" in r]
    third = len(steps) // 3
    first, last = sum(steps[:third]) / third, sum(steps[-third:]) / third
    record(f"{variant} RLVR: training reward gain ({first:.3f} -> {last:.3f})", last - first,
           RLVR_TRAIN_REWARD_GAIN_MIN)
    assert last - first >= RLVR_TRAIN_REWARD_GAIN_MIN, steps


def test_rlvr_raises_heldout_pass_at_1(think_chain, instruct_chain, record):
    """Greedy pass@1 on the suite's held-out prompts (the whole split, 200 per variant), from the saved DPO and
    RLVR checkpoints.

    Asserted over both variants together (400 prompts): one variant's gain on 200 prompts moves by more from
    machine to machine than the pooled one (each variant's is in the learning summary)."""
    gains = []
    for variant, chain in (("think", think_chain), ("instruct", instruct_chain)):
        results = suite(chain)
        before, after = results["dpo"], results["rlvr"]
        gains.append(after["pass@1"] - before["pass@1"])
        record(f"{variant} RLVR: held-out pass@1 gain ({before['pass@1']:.3f} -> {after['pass@1']:.3f}; math "
               f"{before['pass@1/math']:.3f} -> {after['pass@1/math']:.3f}, ifeval {before['pass@1/ifeval']:.3f} -> "
               f"{after['pass@1/ifeval']:.3f}; not asserted alone)", gains[-1], float("-inf"))
    pooled = sum(gains) / len(gains)
    record("RLVR: held-out pass@1 gain, both variants", pooled, RLVR_HELDOUT_GAIN_MIN)
    assert pooled >= RLVR_HELDOUT_GAIN_MIN, gains


def test_the_chains_end_above_their_sft(think_chain, instruct_chain, record):
    """The chains' final checkpoints (after DPO and RLVR) pass more held-out prompts than their SFT checkpoints.

    Asserted over both variants together, as the RLVR gain is: DPO costs the tiny models pass@1 that RLVR
    then wins back and more, and one variant's margin on 200 prompts moves more between machines than the
    pooled one (each variant's is in the learning summary)."""
    margins = []
    for variant, chain in (("think", think_chain), ("instruct", instruct_chain)):
        results = suite(chain)
        sft, final = results["sft"]["pass@1"], results["rlvr"]["pass@1"]
        margins.append(final - sft)
        record(f"{variant} chain: held-out pass@1 over SFT ({sft:.3f} -> DPO {results['dpo']['pass@1']:.3f} -> "
               f"RLVR {final:.3f}; not asserted alone)", margins[-1], float("-inf"))
    pooled = sum(margins) / len(margins)
    record("chains: held-out pass@1 over SFT, both variants", pooled, CHAIN_OVER_SFT_MIN)
    assert pooled > CHAIN_OVER_SFT_MIN, margins
