"""One held-out suite run on a chain's input and on every stage's checkpoint: the report's main table.

The stages each measure themselves (SFT held-out loss, DPO held-out
preference accuracy, RLVR held-out pass@1), but on different checkpoints. To
see what each stage did, as Olmo 3's SFT / DPO / final tables do, the same
suite runs on every checkpoint of the chain:

- `pass@1`, `pass@1/<verifier>`: one greedy response to each held-out RLVR
  prompt (the RLVR recipe's `data.heldout`, the first `size`), passing
  when its verifier scores it 1 (`posttrain.stages.rlvr_eval`);
- `format`: share of those responses in the variant's shape
  (`posttrain.data.chat.is_well_formed`: a leading think block then an
  answer for Think, no think block for Instruct) that also stopped by
  themselves rather than at the token limit;
- `response_tokens`: their mean length;
- `pref_acc`: share of held-out DPO pairs (the DPO recipe's `data.heldout`,
  the first `size`) whose chosen response has the higher per-token log-prob under the
  checkpoint, the model's own preference (as `heldout_pref_acc` in DPO).

Results are cached in `RUN_DIR/eval.json` by checkpoint content hash and
suite fingerprint, so a rerun that skips stages also skips their evaluation.
Everything runs in this process on `transformers` (no Ray): seconds per
checkpoint on the tiny model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from posttrain.checkpoints import checkpoint_hash, read_json, write_json_atomic
from posttrain.config import DPOConfig, RLVRConfig

EVAL_FILE = "eval.json"
PASS = 1.0 - 1e-6  # a verifier score at or above this is a pass (as in RLVR's held-out pass@1)

# Metrics of the suite in the order the report shows them, with their labels; per-verifier pass@1 added live.
METRIC_LABELS = {
    "pass@1": "pass@1, all verifiers",
    "pass@1/math": "pass@1, math",
    "pass@1/ifeval": "pass@1, ifeval",
    "format": "format rate",
    "pref_acc": "preference accuracy",
    "response_tokens": "mean response tokens",
    "truncated": "responses cut at the limit",
}


@dataclass(frozen=True)
class Suite:
    """What is evaluated: rows and limits (no model). `key` fingerprints it for the cache."""

    variant: str
    prompt_rows: tuple  # RLVR held-out rows: messages, ground_truth, verifier
    pair_config: DPOConfig | None  # whose data.heldout holds the held-out pairs
    size: int  # at most this many prompts, and this many pairs
    max_tokens: int
    max_prompt_length: int

    @property
    def key(self) -> str:
        pairs = [s.model_dump(mode="json") for s in self.pair_config.data.heldout] if self.pair_config else []
        text = json.dumps([self.variant, list(self.prompt_rows), pairs, self.size, self.max_tokens, self.max_prompt_length],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_suite(variant: str, rlvr: RLVRConfig | None, dpo: DPOConfig | None, size: int) -> Suite:
    """The suite a chain's recipes define: RLVR held-out prompts, DPO held-out pairs."""
    rows: list[dict] = []
    if rlvr is not None and rlvr.data.heldout:
        import rewards
        from posttrain.data.mixing import mix_section
        from posttrain.data.schemas import rlvr_row_validator

        rewards.load_plugins(rlvr.verifiers.modules)
        rows = mix_section(rlvr.data, rlvr_row_validator(rewards.names()), "heldout").rows[:size]
    pairs = dpo if dpo is not None and dpo.data.heldout else None
    max_tokens = rlvr.rollout.max_response_length if rlvr is not None else 128
    max_prompt = rlvr.rollout.max_prompt_length if rlvr is not None else 2048
    return Suite(variant, tuple(rows), pairs, size, max_tokens, max_prompt)


def evaluate(checkpoint: str | Path, suite: Suite) -> dict[str, float]:
    """The suite's metrics (module docstring) for one checkpoint."""
    metrics: dict[str, float] = {}
    if suite.prompt_rows:
        metrics.update(generation_metrics(checkpoint, suite))
    if suite.pair_config is not None:
        metrics.update(preference_metrics(checkpoint, suite.pair_config, suite.size))
    return metrics


def generation_metrics(checkpoint: str | Path, suite: Suite) -> dict[str, float]:
    import rewards
    from transformers import AutoTokenizer

    from posttrain.config import RolloutSection
    from posttrain.data.chat import is_well_formed
    from posttrain.rollout import build_engine
    from posttrain.stages.rlvr_eval import heldout_prompts

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    prompts = heldout_prompts(suite.prompt_rows, tokenizer, suite.max_prompt_length, None)
    options = RolloutSection(engine="hf", max_response_length=suite.max_tokens, max_prompt_length=suite.max_prompt_length)
    engine = build_engine(str(checkpoint), options, seed=0)
    try:
        completions = engine.generate([p.ids for p in prompts], 1, temperature=0.0, max_tokens=suite.max_tokens, seed=0)
    finally:
        engine.close()
    items = [{"verifier": prompts[c.prompt_index].verifier, "prediction": c.text,
              "label": prompts[c.prompt_index].ground_truth} for c in completions]
    scores = [r.score for r in rewards.score_batch(items, max_workers=1, timeout=10.0)]
    by_verifier: dict[str, list[float]] = {}
    for completion, score in zip(completions, scores):
        by_verifier.setdefault(_verifier_name(prompts[completion.prompt_index].verifier), []).append(score)
    n = max(len(completions), 1)
    out = {"pass@1": sum(s >= PASS for s in scores) / n}
    out.update({f"pass@1/{name}": sum(s >= PASS for s in v) / len(v) for name, v in sorted(by_verifier.items())})
    out["format"] = sum(c.finish_reason == "stop" and is_well_formed(c.text, suite.variant) for c in completions) / n
    out["response_tokens"] = sum(len(c.token_ids) for c in completions) / n
    out["truncated"] = sum(c.finish_reason == "length" for c in completions) / n
    return out


def _verifier_name(verifier) -> str:
    return verifier if isinstance(verifier, str) else "+".join(map(str, verifier))


def preference_metrics(checkpoint: str | Path, dpo: DPOConfig, max_pairs: int | None = None,
                       batch_pairs: int = 16) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.data.preference import collate, load_pairs
    from posttrain.stages.dpo_forward import policy_logps

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = load_pairs(tokenizer, dpo.data, dpo.dpo, "heldout")[0][:max_pairs]  # file order: the same pairs each time
    if not pairs:
        return {}
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    wins = 0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_pairs):
            batch = collate(pairs, range(start, min(start + batch_pairs, len(pairs))), pad_id)
            chosen, rejected = policy_logps(model, batch, pad_id)  # (B,) summed over response tokens
            wins += int((chosen / batch.chosen_lengths > rejected / batch.rejected_lengths).sum())
    return {"pref_acc": wins / len(pairs), "pairs": len(pairs)}


def evaluate_chain(run_dir: str | Path, checkpoints: Mapping[str, str | Path], suite: Suite) -> dict:
    """Evaluate each named checkpoint (input, sft, dpo, rlvr) with the suite, reusing RUN_DIR/eval.json entries
    whose checkpoint hash and suite key match; writes and returns the updated file's content."""
    path = Path(run_dir) / EVAL_FILE
    cached = read_json(path).get("results", {}) if path.is_file() else {}
    results = {}
    for name, checkpoint in checkpoints.items():
        digest = checkpoint_hash(checkpoint)
        old = cached.get(name, {})
        if old.get("checkpoint_hash") == digest and old.get("suite") == suite.key:
            results[name] = old
            continue
        began = time.time()
        metrics = evaluate(checkpoint, suite)
        results[name] = {"checkpoint": str(checkpoint), "checkpoint_hash": digest, "suite": suite.key,
                         "metrics": metrics, "seconds": round(time.time() - began, 2)}
        print(f"[eval {suite.variant} {name}] " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    pairs = max((r["metrics"].get("pairs", 0) for r in results.values()), default=0)
    content = {"suite": {"key": suite.key, "variant": suite.variant, "size": suite.size, "prompts": len(suite.prompt_rows),
                         "pairs": pairs, "max_tokens": suite.max_tokens},
               "results": results}
    write_json_atomic(path, content)
    return content

