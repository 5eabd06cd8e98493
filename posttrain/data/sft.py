"""SFT data path: rows -> tokenized examples -> packed (or padded) rows -> per-step micro-batches.

1. Rows come from the recipe's sources, each tokenised once into a token
   cache (`posttrain.data.token_cache`: flat int32 tokens and a loss mask on
   disk, memory-mapped by every later run and `--resume`) and mixed as index
   arrays (`posttrain.data.token_mixture`, the semantics of
   `posttrain.data.mixing.mix_section`). Rows are checked by
   `posttrain.data.schemas.sft_row` plus `nonempty_content`: no assistant
   turn, an unknown role or empty content is an error naming the file, row
   and field, or (with `data.on_bad_row: skip`) a counted skip.
2. Each conversation is rendered with the chat template and tokenized with
   labels on assistant tokens only (`posttrain.data.chat.tokenize_conversation`;
   every assistant turn of a multi-turn conversation, think block included).
   With `sft.train_on_think: false` the `<think>...</think>` span of each
   assistant turn is masked out of the loss.
3. Longer than `data.max_length`: `data.overlong: drop` drops the example,
   `truncate` keeps its first max_length tokens (and drops it if no target
   token survives). Both are counted in `DataReport`.
4. `sft.packing: true` packs examples into rows of at most max_length tokens
   (best-fit decreasing; positions restart per document so no attention
   crosses documents, `posttrain.data.packing`); false: one example per row.
   A row's tokens are read from the cache only when a step collates it.
5. `StepPlan` (`posttrain.data.step_plan`) fixes, for every optimizer step,
   which rows it trains on; `step_batches` hands each rank its micro-batches
   (over the cache, indices that the rank reads from the memory map itself:
   `posttrain.data.stored_batches`).

The per-row path (`load_split_per_row`, `tokenize_row`, `prepare_examples`:
Python lists, no cache) stays as the reference the cache is tested against.

Batch size: `batch.sequences` rows per step, or `batch.tokens` / max_length
rows (a packed row holds up to max_length tokens, so this is the token
budget of a step); accumulation = ceil(rows_per_step / (micro_batch_size x
ranks)).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from posttrain.config import SFTConfig
from posttrain.data.batches import IGNORE_INDEX, SFTBatch
from posttrain.data.chat import render_with_spans, think_spans, tokenize_conversation
from posttrain.data.mixing import Mixture, mix_section
from posttrain.data.packing import PackedSequence, collate_packed, collate_padded, pack_examples
from posttrain.data.schemas import all_of, sft_row
from posttrain.data.sources import RowAdapter
from posttrain.data.step_plan import StepPlan
from posttrain.data.token_cache import Transform
from posttrain.data.stored_batches import StoredBatch, stored_batch
from posttrain.data.token_mixture import Examples, PackedRows, mix_cached, pack_rows


def nonempty_content(row: dict) -> str | None:
    """Every message says something: an assistant turn may carry only its reasoning or only its function calls,
    and tool output (an environment or tool turn) may be empty."""
    for i, message in enumerate(row["messages"]):
        content = message.get("content") or ""
        said = message.get("reasoning_content") or (message.get("function_calls") or "").strip()
        if message.get("role") in ("environment", "tool") or content.strip():
            continue
        if not (message.get("role") == "assistant" and said):
            return f"messages[{i}].content: empty"
    return None


SFT_ROW = all_of(sft_row, nonempty_content)


@dataclass
class DataReport:
    """What happened to the rows on their way to training (goes into the manifest)."""

    rows: int = 0  # valid rows in the mixture
    skipped_bad_rows: int = 0  # malformed rows skipped (data.on_bad_row: skip)
    bad_row_examples: list[str] = field(default_factory=list)
    overlong_dropped: int = 0
    overlong_truncated: int = 0
    no_target_dropped: int = 0  # no assistant token left to learn from
    examples: int = 0  # examples trained on
    target_tokens: int = 0  # tokens carrying loss
    tokens: int = 0  # all tokens of the examples
    rows_packed: int = 0  # training rows after packing (= examples without packing)
    sources: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tokenize_row(tokenizer, messages, train_on_think: bool) -> dict[str, list[int]]:
    """input_ids and labels (assistant tokens only; think blocks masked unless `train_on_think`)."""
    example = tokenize_conversation(tokenizer, messages)
    if train_on_think:
        return {"input_ids": example["input_ids"], "labels": example["labels"]}
    text, spans = render_with_spans(messages)
    masked = think_spans(text, spans)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    labels = list(example["labels"])
    for i, (start, _end) in enumerate(offsets):
        if any(a <= start < b for a, b in masked):
            labels[i] = IGNORE_INDEX
    return {"input_ids": example["input_ids"], "labels": labels}


def prepare_examples(mixture: Mixture, tokenizer, config: SFTConfig, report: DataReport) -> list[dict]:
    """The per-row path (see `load_split_per_row`): tokenize the mixture's rows, apply the overlong policy, count what was dropped (see module docstring)."""
    max_length, policy = config.data.max_length, config.data.overlong
    examples = []
    for row in mixture.rows:
        example = tokenize_row(tokenizer, row["messages"], config.sft.train_on_think)
        if len(example["input_ids"]) > max_length:
            if policy == "drop":
                report.overlong_dropped += 1
                continue
            example = {key: value[:max_length] for key, value in example.items()}
            report.overlong_truncated += 1
        # position 0 is never predicted, so a target there alone teaches nothing
        if not any(label != IGNORE_INDEX for label in example["labels"][1:]):
            report.no_target_dropped += 1
            continue
        examples.append(example)
    report.examples = len(examples)
    report.tokens = sum(len(e["input_ids"]) for e in examples)
    report.target_tokens = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in examples)
    report.fingerprint = fingerprint(examples)
    return examples


def fingerprint(examples: Sequence[dict]) -> str:
    """sha256 over every example's token ids and labels, in order (16 hex digits)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(str(example["input_ids"]).encode())
        digest.update(str(example["labels"]).encode())
    return digest.hexdigest()[:16]


def load_split(config: SFTConfig, tokenizer, split: str, adapt: Optional[RowAdapter] = None) -> tuple[Examples, DataReport]:
    """Examples of the recipe's "train" or "heldout" mixture, read from the token cache, with their report.

    Each source is tokenised once into `posttrain.data.token_cache`'s store
    (later runs and `--resume` memory-map it); the mixture is index arrays
    into the stores (`posttrain.data.token_mixture`), and an example's tokens
    are read only when a step collates it.
    """
    transform = Transform(tokenizer=tokenizer, validate_row=SFT_ROW, max_length=config.data.max_length,
                          overlong=config.data.overlong, train_on_think=config.sft.train_on_think, adapt=adapt,
                          stop_at_bad_row=config.data.on_bad_row == "error")
    mixture = mix_cached(config.data, transform, split)
    examples = mixture.examples()
    lengths, targets = examples.lengths, examples.targets
    report = DataReport(rows=len(mixture), skipped_bad_rows=sum(s.skipped for s in mixture.sources),
                        bad_row_examples=[e for s in mixture.sources for e in s.examples][:5],
                        examples=len(examples), tokens=int(lengths.sum()), target_tokens=int(targets.sum()),
                        sources=mixture.counts(), fingerprint=mixture.fingerprint(), **mixture.outcome())
    return examples, report


def load_split_per_row(config: SFTConfig, tokenizer, split: str) -> tuple[list[dict], DataReport]:
    """The per-row path (Python dicts, one tokenizer call per row, no cache): the reference that
    tests/data/test_token_cache.py and bench/data_pipeline.py hold the token cache against."""
    mixture = mix_section(config.data, SFT_ROW, split)
    report = DataReport(rows=len(mixture), skipped_bad_rows=mixture.skipped, sources=mixture.counts(),
                        bad_row_examples=[e for s in mixture.sources for e in s.examples][:5])
    return prepare_examples(mixture, tokenizer, config, report), report


def to_rows(examples: Sequence, max_length: int, packing: bool) -> Sequence:
    """Training rows: packed (several documents each) or the examples themselves.

    Over cached `Examples` the rows are index lists whose PackedSequence is
    built when a step reads it (`token_mixture.pack_rows`); over a list of
    example dicts, `pack_examples` builds them all now.
    """
    if isinstance(examples, Examples):
        return pack_rows(examples, max_length) if packing else examples
    return pack_examples(examples, max_length) if packing else list(examples)


def collate(rows: Sequence, pad_token_id: int) -> SFTBatch:
    """One micro-batch: packed rows without attention mask, or padded examples with one."""
    if isinstance(rows[0], PackedSequence):
        return collate_packed(rows, pad_token_id=pad_token_id)
    return collate_padded(rows, pad_token_id=pad_token_id)


def empty_batch(pad_token_id: int) -> SFTBatch:
    """A one-token micro-batch with no target: keeps a rank with no rows in step with the others' collectives."""
    ids = torch.tensor([[pad_token_id]])
    return SFTBatch(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX), position_ids=torch.zeros_like(ids),
                    attention_mask=None, row_lengths=torch.tensor([0]))


def rows_per_step(config: SFTConfig) -> int:
    """Rows per optimizer step from `batch.sequences`, or `batch.tokens` / max_length (rounded up)."""
    if config.batch.sequences is not None:
        return config.batch.sequences
    return math.ceil(config.batch.tokens / config.data.max_length)


def step_batches(plan: StepPlan, rows: Sequence, step: int, pad_token_id: int) -> list[list[SFTBatch | StoredBatch]]:
    """The micro-batches of `step` for every rank (empty micro-batches where a rank ran out of rows).

    Over the token cache they are `StoredBatch`es, which each learner rank
    reads from the memory-mapped stores itself (`posttrain.data.stored_batches`);
    over example dicts, collated `SFTBatch`es.
    """
    stored = isinstance(rows, (PackedRows, Examples))
    out = []
    for rank_parts in plan.rank_micro_batches(step):
        out.append([(stored_batch(rows, part, pad_token_id) if stored else collate([rows[i] for i in part], pad_token_id))
                    if part else empty_batch(pad_token_id) for part in rank_parts])
    return out


def batch_token_counts(batches: Sequence[SFTBatch | StoredBatch]) -> dict[str, int]:
    """real (non-padding) tokens, total tokens (B x T) and loss tokens of some micro-batches."""
    counts = {"real": 0, "total": 0, "loss": 0}
    for b in batches:
        if isinstance(b, StoredBatch):
            real, total, loss = b.real, b.total, b.loss
        else:
            real, total, loss = int(b.row_lengths.sum()), b.input_ids.numel(), b.num_loss_tokens
        counts["real"] += real
        counts["total"] += total if real > 0 else 0
        counts["loss"] += loss
    return counts
