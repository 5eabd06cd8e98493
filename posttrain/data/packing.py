"""Packing tokenized documents into rows, with attention kept inside each document.

Olmo 3 trains SFT on packed sequences with document-level masking: several
conversations share a row, none attends to another. In transformers 5.19
this needs no custom mask. With `attention_mask=None`, `position_ids` that
restart at 0 at each document, and NO cache, `masking_utils.
_preprocess_mask_arguments` calls `find_packed_sequence_indices`: a new
document starts wherever position_ids[t] - position_ids[t-1] != 1, and the
causal mask (and the sliding-window one) is AND-ed with "same document"
(`packed_sequence_mask_function`); RoPE restarts too, since it reads the
same position_ids. sdpa and eager are tested here; both materialise a
(B, 1, T, T) mask. Flash attention (GPU) instead reads restarting
position_ids as variable-length sequences, but only for a batch of one row
(`modeling_flash_attention_utils._is_packed_sequence`): with it, feed packed
rows one per micro-batch (read from the source, not tested here).

The trap: detection runs only when `past_key_values is None`, and Olmo-3's
config has `use_cache=True`, for which the model creates an empty
DynamicCache before building the mask, so detection is skipped and
documents attend across boundaries with no error. Call the model with
`use_cache=False` (or set `model.config.use_cache = False`) on packed
batches. tests/data/test_packing.py checks both: with use_cache=False packed
per-token losses equal unpacked ones within 1e-4, with the default they do
not.

Labels: the first token of every document gets -100. Unpacked, token 0 of a
document is never predicted (nothing precedes it); packed, the previous
document's last position would be trained to predict it. Masking it makes
packed and unpacked losses identical.

Bin packing (registry `PACKING_STRATEGIES`, one signature
`fn(lengths, capacity) -> bins of indices`): first-fit decreasing and
best-fit decreasing, both O(n log n) with a max segment tree and both within
11/9 of the optimal number of rows plus a constant (Johnson 1973; Dosa 2007
for FFD's tight 6/9), so rows come out nearly full.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from posttrain.data.batches import IGNORE_INDEX, SFTBatch
from posttrain.registry import Registry

PACKING_STRATEGIES: Registry = Registry("packing strategy")


@dataclass(frozen=True)
class PackedSequence:
    """One packed row: documents back to back, positions restarting at each."""

    input_ids: list[int]
    labels: list[int]  # first token of each document set to -100
    position_ids: list[int]  # 0..len-1 per document
    document_lengths: list[int]
    example_indices: list[int]  # which input examples, in row order

    def __len__(self) -> int:
        return len(self.input_ids)


# --------------------------------------------------------------------------- bin packing


def _max_tree(values: Sequence[int]) -> tuple[list[int], int]:
    """A max segment tree over `values`: (tree, size); leaf i is tree[size + i]."""
    size = 1
    while size < max(1, len(values)):
        size *= 2
    tree = [-1] * (2 * size)
    tree[size : size + len(values)] = list(values)
    for node in range(size - 1, 0, -1):
        tree[node] = max(tree[2 * node], tree[2 * node + 1])
    return tree, size


def _set_leaf(tree: list[int], size: int, index: int, value: int) -> None:
    node = index + size
    tree[node] = value
    node //= 2
    while node:
        tree[node] = max(tree[2 * node], tree[2 * node + 1])
        node //= 2


def _leftmost_at_least(tree: list[int], size: int, start: int, need: int) -> int:
    """Smallest leaf index >= start whose value is >= need, or -1."""
    node = start + size
    while tree[node] < need:
        while node & 1:  # a right child: its right neighbour lies further up
            node >>= 1
        if node == 0:
            return -1
        node += 1
    while node < size:
        node = 2 * node if tree[2 * node] >= need else 2 * node + 1
    return node - size


def _decreasing(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


@PACKING_STRATEGIES.register("first_fit_decreasing")
def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Longest first, each into the first (oldest) row it fits; a new row otherwise.

    Leaves of the tree are rows' free space; unopened rows have full capacity,
    so the leftmost leaf that fits is the first open row that fits, or the next
    new one.
    """
    tree, size = _max_tree([capacity] * len(lengths))
    bins: list[list[int]] = []
    free = [capacity] * len(lengths)
    for index in _decreasing(lengths):
        row = _leftmost_at_least(tree, size, 0, lengths[index])
        if row == len(bins):
            bins.append([])
        bins[row].append(index)
        free[row] -= lengths[index]
        _set_leaf(tree, size, row, free[row])
    return bins


@PACKING_STRATEGIES.register("best_fit_decreasing")
def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Longest first, each into the open row with the least free space that still fits.

    Leaves of the tree are free-space values 0..capacity, holding how many
    open rows have exactly that much free space; ties go to the oldest row.
    """
    rows_with_free: list[list[int]] = [[] for _ in range(capacity + 1)]
    tree, size = _max_tree([0] * (capacity + 1))
    bins: list[list[int]] = []
    for index in _decreasing(lengths):
        length = lengths[index]
        free = _leftmost_at_least(tree, size, length, 1)
        if free == -1:
            row, free = len(bins), capacity
            bins.append([])
        else:
            row = heapq.heappop(rows_with_free[free])
            _set_leaf(tree, size, free, len(rows_with_free[free]))
        bins[row].append(index)
        heapq.heappush(rows_with_free[free - length], row)
        _set_leaf(tree, size, free - length, len(rows_with_free[free - length]))
    return bins


# --------------------------------------------------------------------------- packing


def _checked_lengths(examples: Sequence[Mapping[str, Sequence[int]]], max_length: int) -> list[int]:
    lengths = []
    for i, example in enumerate(examples):
        for field in ("input_ids", "labels"):
            if field not in example:
                raise ValueError(f"example {i}: missing field {field!r}")
        n, n_labels = len(example["input_ids"]), len(example["labels"])
        if n != n_labels:
            raise ValueError(f"example {i}: input_ids has {n} tokens but labels has {n_labels}")
        if not 0 < n <= max_length:
            raise ValueError(f"example {i}: input_ids has {n} tokens, must be 1..max_length={max_length}")
        lengths.append(n)
    return lengths


def pack_examples(
    examples: Sequence[Mapping[str, Sequence[int]]],
    max_length: int,
    *,
    strategy: str = "best_fit_decreasing",
) -> list[PackedSequence]:
    """Pack examples ({"input_ids", "labels"}, equal lengths <= max_length) into rows of <= max_length.

    Every example lands in exactly one row, whole (truncate or drop longer
    ones before packing; they raise here, naming the example). Rows come in
    the order the strategy opened them; shuffle them for training.
    """
    lengths = _checked_lengths(examples, max_length)
    return [pack_documents([examples[i] for i in indices], indices)
            for indices in PACKING_STRATEGIES.get(strategy)(lengths, max_length)]


def pack_documents(documents: Sequence[Mapping[str, Sequence[int]]], indices: Sequence[int]) -> PackedSequence:
    """One packed row: `documents` ({"input_ids", "labels"}) back to back; `indices` name them in the row."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for doc in documents:
        input_ids.extend(doc["input_ids"])
        labels.append(IGNORE_INDEX)  # nothing in this document predicts its first token
        labels.extend(doc["labels"][1:])
        position_ids.extend(range(len(doc["input_ids"])))
    return PackedSequence(input_ids, labels, position_ids, [len(d["input_ids"]) for d in documents], list(indices))


def collate_packed(rows: Sequence[PackedSequence], *, pad_token_id: int, pad_to: int | None = None) -> SFTBatch:
    """Stack packed rows into an SFTBatch, right-padded to the longest row (or `pad_to`).

    attention_mask is None, so the model separates documents by position_ids
    (call it with use_cache=False). Padding is its own document (positions
    restart at 0), pad_token_id as input and -100 as label.
    """
    width = max(len(row) for row in rows) if pad_to is None else pad_to
    if any(len(row) > width for row in rows):
        raise ValueError(f"a packed row is longer than pad_to={pad_to}")
    input_ids, labels, positions = [], [], []
    for row in rows:
        pad = width - len(row)
        input_ids.append(row.input_ids + [pad_token_id] * pad)
        labels.append(row.labels + [IGNORE_INDEX] * pad)
        positions.append(row.position_ids + list(range(pad)))
    return SFTBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long),
        attention_mask=None,
        row_lengths=torch.tensor([len(row) for row in rows], dtype=torch.long),
    )


def collate_padded(
    examples: Sequence[Mapping[str, Sequence[int]]], *, pad_token_id: int, pad_to: int | None = None
) -> SFTBatch:
    """One example per row, right-padded to the longest (or `pad_to`), with an attention mask.

    The baseline packing is measured against.
    """
    width = max(len(example["input_ids"]) for example in examples) if pad_to is None else pad_to
    _checked_lengths(examples, width)
    input_ids, labels, masks = [], [], []
    for example in examples:
        n = len(example["input_ids"])
        input_ids.append(list(example["input_ids"]) + [pad_token_id] * (width - n))
        labels.append(list(example["labels"]) + [IGNORE_INDEX] * (width - n))
        masks.append([1] * n + [0] * (width - n))
    return SFTBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        position_ids=torch.arange(width, dtype=torch.long).repeat(len(examples), 1),
        attention_mask=torch.tensor(masks, dtype=torch.long),
        row_lengths=torch.tensor([len(example["input_ids"]) for example in examples], dtype=torch.long),
    )


def padding_stats(batch: SFTBatch) -> dict[str, float]:
    """real_tokens, total_tokens (B x T) and padding_fraction = 1 - real / total of one batch."""
    total = batch.input_ids.numel()
    real = int(batch.row_lengths.sum()) if batch.row_lengths is not None else total
    return {"real_tokens": float(real), "total_tokens": float(total), "padding_fraction": 1.0 - real / max(total, 1)}
