"""Delta-learning preference pairs: chosen from a strong model, rejected from a weak one (Olmo 3 DPO).

`build_pairs(options)` reads prompt rows (the RLVR format: `messages` ending
in a user turn, optionally a verifier name and its `ground_truth`), samples
answers from both models, and writes a DPO dataset (`chosen` / `rejected`
conversations, one JSON line per prompt). The "delta" is the quality gap
between the two models (Olmo 3: Qwen3-32B vs Qwen3-0.6B); a verifier, where a
row names one, makes the gap certain:

- a row naming a verifier keeps a pair only when a chosen sample passes it
  (score >= `pass_threshold`) and a rejected sample does not;
- a row without one pairs the first chosen sample with the first rejected
  sample whose text differs;
- chosen samples cut off at `max_tokens` are never chosen;
- with `max_length_diff`, the pair's response lengths (tokens of the chosen
  model's tokenizer) may differ by at most that many tokens (Olmo 3 Instruct:
  100), so DPO does not learn "longer is better".

Phases, each resumable: (1) generate with the chosen model, appending each
prompt's samples to `OUT.parts/chosen.jsonl`; (2) the same with the rejected
model (only one model is in memory at a time, so both fit where one does);
(3) score and pair, writing OUT atomically. A rerun skips prompts whose
samples are already on disk (by prompt id: the row's id column, else a hash
of its messages), so a killed run continues where it stopped, and a rerun with
other pairing options (`max_length_diff`, `pass_threshold`) regenerates
nothing. Generation settings are recorded in `OUT.parts/settings.json`; a
rerun with different ones refuses to mix samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from posttrain.checkpoints import write_json_atomic

SIDES = ("chosen", "rejected")


@dataclass
class PairsOptions:
    chosen_model: str
    rejected_model: str
    prompts: str
    out: str
    verifier_column: str = "verifier"
    label_column: str = "ground_truth"
    id_column: str = "id"
    max_length_diff: Optional[int] = None
    pass_threshold: float = 1.0
    engine: str = "vllm"
    samples: int = 1  # samples per prompt and model; more raise the yield of verified pairs
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 512
    max_prompt_length: int = 2048  # with max_tokens, sizes the engine's context (vLLM's max_model_len)
    chunk_size: int = 64  # prompts per generate() call and per append to the parts files
    seed: int = 0
    kv_cache_gib: Optional[float] = None
    gpu_memory_utilization: float = 0.9
    progress: bool = True

    def generation_settings(self) -> dict:
        keys = ("chosen_model", "rejected_model", "prompts", "engine", "samples", "temperature", "top_p", "max_tokens",
                "seed")
        return {k: getattr(self, k) for k in keys}


@dataclass
class PairsReport:
    prompts: int = 0
    generated: dict[str, int] = field(default_factory=lambda: {side: 0 for side in SIDES})  # prompts generated this run
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> prompts without a pair

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------
# Prompts


def prompt_id(row: dict, id_column: str) -> str:
    """The row's id column, else a hash of its messages (the same prompt always gets the same id)."""
    if row.get(id_column) not in (None, ""):
        return str(row[id_column])
    return hashlib.sha256(json.dumps(row["messages"], sort_keys=True).encode()).hexdigest()[:16]


def read_prompts(options: PairsOptions) -> list[dict]:
    """Prompt rows with a valid `messages` list ending in a user turn; a bad row fails naming file:line and field."""
    from posttrain.config import DatasetSpec
    from posttrain.data.schemas import rlvr_row, sft_row
    from posttrain.data.sources import DataError, load_rows

    _, rows, locate = load_rows(DatasetSpec(path=options.prompts))
    for index, row in enumerate(rows):
        verifier = row.get(options.verifier_column)
        if verifier:
            label = row.get(options.label_column)
            problem = rlvr_row({"messages": row.get("messages"), "verifier": verifier, "ground_truth": label})
        else:  # no verifier: the messages must still be a conversation ending in the user's turn
            problem = sft_row({"messages": (row.get("messages") or []) + [{"role": "assistant", "content": ""}]})
            if problem is None and row["messages"][-1]["role"] != "user":
                problem = f"messages[{len(row['messages']) - 1}].role: the prompt must end with a user turn"
        if problem:
            raise DataError(f"{locate(index)}: {problem}")
    return rows


# --------------------------------------------------------------------------
# Parts files: one JSON line per prompt and model, appended as chunks finish


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a killed write) is cut off the file."""
    if not path.is_file():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return records


def append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
        handle.flush()
        os.fsync(handle.fileno())


def check_settings(parts: Path, settings: dict) -> None:
    path = parts / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ValueError(f"{parts}: samples there were generated with other settings ({', '.join(changed)}); "
                             f"use another --out or remove {parts}")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def generate_side(options: PairsOptions, side: str, rows: list[dict], ids: list[str], parts: Path) -> int:
    """Generate the samples of one model for the prompts not yet in `parts/<side>.jsonl`; returns prompts generated."""
    path = parts / f"{side}.jsonl"
    done = {r["prompt_id"] for r in read_jsonl(path)}
    todo = [(i, r) for i, r in zip(ids, rows) if i not in done]
    if not todo:
        return 0
    from transformers import AutoTokenizer

    from posttrain.config import RolloutSection
    from posttrain.metrics import progress
    from posttrain.rollout import build_engine

    model = getattr(options, f"{side}_model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    rollout = RolloutSection(engine=options.engine, temperature=options.temperature, top_p=options.top_p,
                             max_response_length=options.max_tokens, max_prompt_length=options.max_prompt_length,
                             kv_cache_gib=options.kv_cache_gib,
                             gpu_memory_utilization=options.gpu_memory_utilization)
    engine = build_engine(model, rollout, seed=options.seed)
    bar = progress(len(todo), desc=f"pairs: {side}", enabled=options.progress, unit="prompt")
    try:
        for number, chunk in enumerate(_chunks(todo, options.chunk_size)):
            prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True,
                                                     return_dict=False) for _, r in chunk]
            completions = engine.generate([list(p) for p in prompts], options.samples, temperature=options.temperature,
                                          top_p=options.top_p, max_tokens=options.max_tokens,
                                          seed=options.seed + hash_seed(side, chunk[0][0]))
            by_prompt: dict[int, list[dict]] = {}
            for c in completions:
                by_prompt.setdefault(c.prompt_index, []).append({"text": c.text, "finish_reason": c.finish_reason})
            append_jsonl(path, [{"prompt_id": pid, "samples": by_prompt[k]} for k, (pid, _) in enumerate(chunk)])
            bar.update(len(chunk))
    finally:
        bar.close()
        engine.close()
    return len(todo)


def hash_seed(side: str, first_id: str) -> int:
    """A per-chunk seed offset that does not depend on where a resumed run starts."""
    return int(hashlib.sha256(f"{side}|{first_id}".encode()).hexdigest()[:7], 16)


# --------------------------------------------------------------------------
# Pairing


def choose(
    row: dict, chosen: list[dict], rejected: list[dict], options: PairsOptions, count_tokens
) -> tuple[Optional[tuple[str, str]], str]:
    """((chosen text, rejected text), "kept") or (None, the reason no pair was kept)."""
    import rewards

    verifier = row.get(options.verifier_column)
    good = [s for s in chosen if s["finish_reason"] != "length"]
    if not good:
        return None, "chosen_truncated"
    if verifier:
        label = row.get(options.label_column)
        good = [s for s in good if rewards.score(verifier, s["text"], label) >= options.pass_threshold]
        if not good:
            return None, "chosen_failed_verifier"
        bad = [s for s in rejected if rewards.score(verifier, s["text"], label) < options.pass_threshold]
        if not bad:
            return None, "rejected_passed_verifier"
    else:
        bad = rejected
    candidates = [(c["text"], r["text"]) for c in good for r in bad
                  if r["text"].strip() and c["text"].strip() != r["text"].strip()]
    if not candidates:
        return None, "identical"
    if options.max_length_diff is not None:
        candidates = [p for p in candidates if abs(count_tokens(p[0]) - count_tokens(p[1])) <= options.max_length_diff]
        if not candidates:
            return None, "length_diff"
    return candidates[0], "kept"


def pair_rows(options: PairsOptions, rows: list[dict], ids: list[str], parts: Path, report: PairsReport) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(options.chosen_model)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    samples = {side: {r["prompt_id"]: r["samples"] for r in read_jsonl(parts / f"{side}.jsonl")} for side in SIDES}
    out, dropped = [], Counter()
    for pid, row in zip(ids, rows):
        pair, reason = choose(row, samples["chosen"][pid], samples["rejected"][pid], options, count_tokens)
        if pair is None:
            dropped[reason] += 1
            continue
        messages = list(row["messages"])
        extra = {k: v for k, v in row.items() if k not in ("messages", "chosen", "rejected")}
        out.append({**extra, "prompt_id": pid,
                    "chosen": messages + [{"role": "assistant", "content": pair[0]}],
                    "rejected": messages + [{"role": "assistant", "content": pair[1]}],
                    "chosen_model": options.chosen_model, "rejected_model": options.rejected_model})
    report.kept, report.dropped = len(out), dict(dropped)
    return out


def build_pairs(options: PairsOptions) -> PairsReport:
    """Generate (resumably), pair and write `options.out`; see the module docstring."""
    rows = read_prompts(options)
    ids, seen, unique = [], set(), []
    for row in rows:  # the same prompt twice is generated once
        pid = prompt_id(row, options.id_column)
        if pid not in seen:
            seen.add(pid)
            ids.append(pid)
            unique.append(row)
    out = Path(options.out)
    parts = out.with_name(out.name + ".parts")
    check_settings(parts, options.generation_settings())
    report = PairsReport(prompts=len(unique))
    for side in SIDES:
        report.generated[side] = generate_side(options, side, unique, ids, parts)
    pairs = pair_rows(options, unique, ids, parts, report)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.writelines(json.dumps(p) + "\n" for p in pairs)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    write_json_atomic(out.with_name(out.name + ".report.json"), {"options": asdict(options), **report.to_dict()})
    return report

