"""SFT micro-batches that a learner rank reads from the token stores itself.

Over the token cache (`posttrain.data.token_cache`), the driver does not
collate a step's tokens and ship them to every rank. It sends each rank
`StoredBatch`es: the store directories and, per training row, the (store,
row) pairs of its documents. The rank's learner calls `batch.to(device)`
on every micro-batch it trains on, which memory-maps the stores on that
node (opened once per process) and collates the `SFTBatch` there. The
driver's traffic per step is a few integers per document, whatever the
sequence length; the stores must be on a filesystem every learner node
sees, as the checkpoints are.

The counts the driver needs (real tokens, padded tokens, loss tokens: the
loss normaliser of the step) come from the stores' per-row lengths and
target counts, without reading a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from posttrain.data.batches import SFTBatch
from posttrain.data.packing import collate_packed, collate_padded, pack_documents
from posttrain.data.token_cache import TokenStore
from posttrain.data.token_mixture import Examples, PackedRows


@lru_cache(maxsize=64)
def mapped_store(directory: str) -> TokenStore:
    """A store memory-mapped once per process (a learner reads from it every step)."""
    return TokenStore(Path(directory))


@dataclass(frozen=True)
class StoredBatch:
    """One micro-batch as store indices; `to(device)` reads and collates it where it runs."""

    stores: tuple[str, ...]  # absolute store directories
    rows: tuple[tuple[tuple[int, int], ...], ...]  # per training row: its documents as (store, row) pairs
    packed: bool  # documents packed into one row (positions restarting), or one padded example per row
    pad_token_id: int
    real: int  # non-padding tokens
    total: int  # B x T after padding
    loss: int  # tokens carrying loss (position 0 of each document excluded)

    def materialize(self) -> SFTBatch:
        examples = [[mapped_store(self.stores[s]).example(r) for s, r in row] for row in self.rows]
        if self.packed:
            return collate_packed([pack_documents(docs, range(len(docs))) for docs in examples], pad_token_id=self.pad_token_id)
        return collate_padded([docs[0] for docs in examples], pad_token_id=self.pad_token_id)

    def to(self, device) -> SFTBatch:
        return self.materialize().to(device)


def stored_batch(rows: PackedRows | Examples, indices: Sequence[int], pad_token_id: int) -> StoredBatch:
    """The micro-batch of training rows `indices` of cache-backed `rows`."""
    packed = isinstance(rows, PackedRows)
    examples = rows.examples if packed else rows
    members = [rows.members[rows.starts[r]:rows.starts[r + 1]] for r in indices] if packed \
        else [np.array([i]) for i in indices]
    lengths, targets = examples.lengths, examples.targets
    docs = tuple(tuple((int(examples.store_ids[i]), int(examples.row_ids[i])) for i in m) for m in members)
    row_tokens = [int(lengths[m].sum()) for m in members]
    return StoredBatch(
        stores=tuple(str(Path(store.directory).resolve()) for store in examples.stores), rows=docs, packed=packed,
        pad_token_id=pad_token_id, real=sum(row_tokens), total=len(row_tokens) * max(row_tokens),
        loss=int(sum(int(targets[m].sum()) for m in members)))
