"""Held-out evaluation: pass@1 per verifier, in the RLVR loop and on saved checkpoints.

A response passes when its verifier scores it 1 (a math answer equal to the
label; every IFEval constraint of the prompt satisfied); the mean score is
reported beside it (partial credit of multi-constraint prompts).

- In the loop: the RLVR stage generates on its engines
  (`RolloutQueue.evaluate`) before training, every `eval.every` steps and at
  the end; `summarize` turns the scored groups into `eval/pass@1`,
  `eval/score` and the same per verifier (`eval/pass@1/math`, ...).
- On checkpoints: the suite a chain's recipes define (`build_suite`) runs
  on the chain's input and on every stage's checkpoint, in this process on
  `transformers` (no Ray), into RUN_DIR/eval.json (`evaluate_chain`), cached
  by checkpoint content hash and suite fingerprint. Its metrics:
  - `pass@1`, `pass@1/<verifier>`: one greedy response to each held-out RLVR
    prompt (the RLVR recipe's `data.heldout`: all of it, or the first `size`);
  - `format`: share of those responses in the variant's shape
    (`posttrain.data.chat.is_well_formed`) that also stopped by themselves;
  - `response_tokens`, `truncated`: their mean length, the share cut at the limit;
  - `pref_acc`: share of held-out DPO pairs (the DPO recipe's `data.heldout`,
    all, or the first `size`) whose chosen response has the higher per-token
    log-prob under the checkpoint (as `heldout_pref_acc` in DPO).

One checkpoint from the command line:

    python -m posttrain.eval.heldout CHECKPOINT HELDOUT.jsonl [--variant think] [--max-prompts N] [--max-tokens T]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from posttrain.checkpoints import checkpoint_hash, read_json, write_json_atomic
from posttrain.config import DPOConfig, RLVRConfig
from posttrain.data.rlvr import Group, heldout_prompts, verifier_name
from rewards.core import full_score

PASS = 1.0 - 1e-6  # a score at or above this is a pass
EVAL_FILE = "eval.json"

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


def pass_rates(by_verifier: Mapping[str, Sequence[float]], prefix: str = "") -> dict[str, float]:
    """pass@1 and mean score over all scores, and per verifier; plus the count."""
    everything = [score for scores in by_verifier.values() for score in scores]
    out = {f"{prefix}pass@1": _pass(everything), f"{prefix}score": _mean(everything), f"{prefix}count": len(everything)}
    for name, scores in sorted(by_verifier.items()):
        out[f"{prefix}pass@1/{name}"] = _pass(scores)
        out[f"{prefix}score/{name}"] = _mean(scores)
    return out


def summarize(groups: Sequence[Group], prefix: str = "eval/") -> dict[str, float]:
    """`pass_rates` of scored groups' responses, by the verifier each prompt names.

    Scores are taken as fractions of the prompt's full score (`rewards.core.full_score`: a row of k verifiers
    sums k scores), so a pass means every verifier of the row passed.
    """
    by_verifier: dict[str, list[float]] = defaultdict(list)
    for group in groups:
        by_verifier[group.verifier_name].extend(score_fractions(group))
    return pass_rates(by_verifier, prefix)


def score_fractions(group: Group) -> list[float]:
    """Each response's reward as a fraction of the prompt's full score (1 for a prompt of one verifier)."""
    full = full_score(group.prompt.verifier)
    return [r / full for r in group.rewards]


def _pass(scores: Sequence[float]) -> float:
    return sum(s >= PASS for s in scores) / len(scores) if scores else float("nan")


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores) if scores else float("nan")


@dataclass(frozen=True)
class Suite:
    """What is evaluated: rows and limits (no model). `key` fingerprints it for the cache."""

    variant: str
    prompt_rows: tuple  # RLVR held-out rows: messages, ground_truth, verifier
    pair_config: DPOConfig | None  # whose data.heldout holds the held-out pairs
    size: int | None  # at most this many prompts, and this many pairs; None: the whole held-out split
    max_tokens: int
    max_prompt_length: int

    @property
    def key(self) -> str:
        pairs = [s.model_dump(mode="json") for s in self.pair_config.data.heldout] if self.pair_config else []
        text = json.dumps([self.variant, list(self.prompt_rows), pairs, self.size, self.max_tokens, self.max_prompt_length],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_suite(variant: str, rlvr: RLVRConfig | None, dpo: DPOConfig | None, size: int | None = None) -> Suite:
    """The suite a chain's recipes define: RLVR held-out prompts, DPO held-out pairs."""
    rows: list[dict] = []
    if rlvr is not None and rlvr.data.heldout:
        import rewards
        from posttrain.data.mixing import mix_section
        from posttrain.data.released import rlvr_adapter
        from posttrain.data.schemas import rlvr_row_validator

        rewards.load_plugins(rlvr.verifiers.modules)
        adapt = rlvr_adapter(rlvr.verifiers.aliases, rewards.names())
        rows = mix_section(rlvr.data, rlvr_row_validator(rewards.names()), "heldout", adapt=adapt).rows[:size]
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


def generation_metrics(checkpoint: str | Path, suite: Suite, engine: str = "hf") -> dict[str, float]:
    """One greedy response per suite prompt from a local engine, scored by each prompt's verifier."""
    import rewards
    from transformers import AutoTokenizer

    from posttrain.config import RolloutSection
    from posttrain.data.chat import is_well_formed
    from posttrain.rollout import build_engine

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    prompts = heldout_prompts(suite.prompt_rows, tokenizer, suite.max_prompt_length, None)
    options = RolloutSection(engine=engine, max_response_length=suite.max_tokens,
                             max_prompt_length=suite.max_prompt_length)
    model = build_engine(str(checkpoint), options, seed=0)
    try:
        completions = model.generate([p.ids for p in prompts], 1, temperature=0.0, max_tokens=suite.max_tokens, seed=0)
    finally:
        model.close()
    items = [{"verifier": prompts[c.prompt_index].verifier, "prediction": c.text,
              "label": prompts[c.prompt_index].ground_truth} for c in completions]
    scores = [r.score for r in rewards.score_batch(items, max_workers=1, timeout=10.0)]
    by_verifier: dict[str, list[float]] = defaultdict(list)
    for completion, score in zip(completions, scores):
        spec = prompts[completion.prompt_index].verifier
        by_verifier[verifier_name(spec)].append(score / full_score(spec))
    out = {k: v for k, v in pass_rates(by_verifier).items() if k.startswith("pass@1")}
    n = max(len(completions), 1)
    out["format"] = sum(c.finish_reason == "stop" and is_well_formed(c.text, suite.variant) for c in completions) / n
    out["response_tokens"] = sum(len(c.token_ids) for c in completions) / n
    out["truncated"] = sum(c.finish_reason == "length" for c in completions) / n
    return out


def preference_metrics(checkpoint: str | Path, dpo: DPOConfig, max_pairs: int | None = None,
                       batch_pairs: int = 16) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.data.preference import collate, load_pairs
    from posttrain.objectives.dpo import policy_logps

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


def read_rows(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="held-out pass@1 of a checkpoint, per verifier")
    parser.add_argument("checkpoint")
    parser.add_argument("heldout", help="RLVR rows (.jsonl): messages, ground_truth, verifier")
    parser.add_argument("--variant", choices=("think", "instruct"), default="think", help="the shape `format` checks")
    parser.add_argument("--max-prompts", type=int)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-prompt-length", type=int, default=2048)
    parser.add_argument("--engine", default="hf")
    args = parser.parse_args(argv)
    rows = read_rows(args.heldout)
    suite = Suite(args.variant, tuple(rows[:args.max_prompts] if args.max_prompts else rows), None,
                  len(rows), args.max_tokens, args.max_prompt_length)
    print(json.dumps(generation_metrics(args.checkpoint, suite, engine=args.engine), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
