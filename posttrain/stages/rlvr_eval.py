"""Held-out pass@1, per verifier: one response per prompt (greedy by default), scored by its verifier.

A response passes when its score is 1 (a math answer equal to the label;
every IFEval constraint of the prompt satisfied); the mean score is reported
beside it (partial credit of multi-constraint prompts). `summarize` turns
scored groups into `eval/pass@1`, `eval/score`, and the same per verifier
(`eval/pass@1/math`, ...).

The RLVR stage evaluates on its engines (`RolloutQueue.evaluate`) before
training, every `eval.every` steps and at the end. `evaluate_checkpoint`
does the same from a saved checkpoint without Ray (a local engine and
`rewards.score_batch`), which is how tests and benchmarks compare a model
before and after RLVR:

    python -m posttrain.stages.rlvr_eval CHECKPOINT HELDOUT.jsonl [--max-prompts N] [--max-tokens T]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from posttrain.stages.rlvr_data import Group, Prompt, encode_prompts

PASS = 1.0 - 1e-6  # a score at or above this is a pass


def summarize(groups: Sequence[Group], prefix: str = "eval/") -> dict[str, float]:
    """pass@1 and mean score over all groups' responses, and per verifier; plus the count."""
    by_verifier: dict[str, list[float]] = defaultdict(list)
    for group in groups:
        by_verifier[group.verifier_name].extend(group.rewards)
    everything = [score for scores in by_verifier.values() for score in scores]
    out = {f"{prefix}pass@1": _pass(everything), f"{prefix}score": _mean(everything), f"{prefix}count": len(everything)}
    for name, scores in sorted(by_verifier.items()):
        out[f"{prefix}pass@1/{name}"] = _pass(scores)
        out[f"{prefix}score/{name}"] = _mean(scores)
    return out


def _pass(scores: Sequence[float]) -> float:
    return sum(s >= PASS for s in scores) / len(scores) if scores else float("nan")


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores) if scores else float("nan")


def heldout_prompts(rows: Sequence[dict], tokenizer, max_prompt_length: int, max_prompts: int | None) -> list[Prompt]:
    """The first `max_prompts` held-out rows (file order) as prompts."""
    rows = list(rows)[:max_prompts] if max_prompts else list(rows)
    return encode_prompts(rows, tokenizer, max_prompt_length)[0]


def evaluate_checkpoint(checkpoint: str | Path, rows: Sequence[dict], *, max_tokens: int = 128,
                        temperature: float = 0.0, max_prompts: int | None = None, engine: str = "hf",
                        max_prompt_length: int = 2048, max_workers: int | None = 1, seed: int = 0) -> dict[str, float]:
    """Held-out pass@1 of a saved checkpoint, in this process (no Ray); see the module docstring."""
    import rewards
    from transformers import AutoTokenizer

    from posttrain.config import RolloutSection
    from posttrain.rollout import build_engine

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    prompts = heldout_prompts(rows, tokenizer, max_prompt_length, max_prompts)
    options = RolloutSection(engine=engine, max_response_length=max_tokens, max_prompt_length=max_prompt_length)
    model = build_engine(str(checkpoint), options, seed=seed)
    try:
        completions = model.generate([p.ids for p in prompts], 1, temperature=temperature, max_tokens=max_tokens,
                                     seed=seed)
    finally:
        model.close()
    items = [{"verifier": prompts[c.prompt_index].verifier, "prediction": c.text,
              "label": prompts[c.prompt_index].ground_truth} for c in completions]
    results = rewards.score_batch(items, max_workers=max_workers, timeout=10.0)
    groups = [Group(prompt=prompts[c.prompt_index], response_ids=[c.token_ids], engine_logprobs=[c.logprobs],
                    truncated=[c.finish_reason == "length"], version=0, rewards=[r.score], texts=[c.text])
              for c, r in zip(completions, results)]
    return summarize(groups)


def read_rows(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="held-out pass@1 of a checkpoint, per verifier")
    parser.add_argument("checkpoint")
    parser.add_argument("heldout", help="RLVR rows (.jsonl): messages, ground_truth, verifier")
    parser.add_argument("--max-prompts", type=int)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--engine", default="hf")
    args = parser.parse_args(argv)
    metrics = evaluate_checkpoint(args.checkpoint, read_rows(args.heldout), max_tokens=args.max_tokens,
                                  max_prompts=args.max_prompts, engine=args.engine)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
