"""The SFT mixture over cached token stores: index arrays in, examples and packed rows read on demand.

Same semantics as `posttrain.data.mixing.mix` over `sources.read_source`,
without a row ever becoming a Python dict here:
1. every source opens its `TokenStore` (`posttrain.data.token_cache`);
2. its valid rows (status not BAD; a bad row fails as `FILE:LINE: field:
   problem` with `on_bad_row: error`, is counted with `skip`) are sampled
   by count or fraction with `random.Random(f"{seed}|{draw_key(spec)}")`:
   whole copies while the count exceeds the rows, then a seeded sample, in
   file order (a streamed source gives its first `count` rows as they are);
3. the parts are concatenated in recipe order and shuffled with the data seed
   (train only), as a permutation of the index arrays;
4. rows the overlong policy dropped, or with no target, leave the mixture
   here (they were counted as rows, as `prepare_examples` counts them).

`Examples` and `PackedRows` are sequences over the memory-mapped stores: an
example's token list, or a packed row, exists only while a step collates it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from posttrain.config import DataSection, DatasetSpec
from posttrain.data.packing import PACKING_STRATEGIES, PackedSequence, pack_documents
from posttrain.data.sources import DataError, SourceReport, draw_key, sample_positions, wanted
from posttrain.data.token_cache import BAD, KEPT, NO_TARGET, OVERLONG, TokenStore, Transform, bad_row_examples, \
    cache_root, open_store


class Examples(Sequence):
    """Kept examples in mixture order: `examples[i]` is {"input_ids", "labels"} read from store_ids[i]'s map."""

    def __init__(self, stores: list[TokenStore], store_ids: np.ndarray, row_ids: np.ndarray):
        self.stores, self.store_ids, self.row_ids = stores, store_ids, row_ids  # (N,) int32, (N,) int64

    def _per_row(self, name: str) -> np.ndarray:
        return gather(self.stores, self.store_ids, self.row_ids, name, np.int64)

    @cached_property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of each example."""
        return self._per_row("lengths")

    @cached_property
    def targets(self) -> np.ndarray:
        """(N,) loss tokens of each example (position 0 excluded)."""
        return self._per_row("targets")

    def __len__(self) -> int:
        return len(self.row_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.stores[int(self.store_ids[i])].example(int(self.row_ids[i]))


class PackedRows(Sequence):
    """Packed training rows as index lists into `Examples`; `rows[r]` builds its PackedSequence on demand."""

    def __init__(self, examples: Examples, members: np.ndarray, starts: np.ndarray):
        self.examples, self.members, self.starts = examples, members, starts  # row r: members[starts[r]:starts[r+1]]

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, r: int) -> PackedSequence:
        if not -len(self) <= r < len(self):
            raise IndexError(r)
        r %= len(self)
        indices = self.members[self.starts[r]:self.starts[r + 1]].tolist()
        return pack_documents([self.examples[i] for i in indices], indices)


def pack_rows(examples: Examples, max_length: int, strategy: str = "best_fit_decreasing") -> PackedRows:
    """`pack_examples` over the examples' lengths: the same bins, rows built only when read."""
    lengths = examples.lengths
    bad = np.flatnonzero((lengths < 1) | (lengths > max_length))
    if len(bad):
        raise ValueError(f"example {bad[0]}: input_ids has {lengths[bad[0]]} tokens, must be 1..max_length={max_length}")
    bins = PACKING_STRATEGIES.get(strategy)(lengths.tolist(), max_length)
    starts = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in bins], out=starts[1:])
    members = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=int(starts[-1]))
    return PackedRows(examples, members, starts)


@dataclass
class CachedMixture:
    """Mixed rows as (store, row) index arrays, in mixture order; bad rows are already out."""

    stores: list[TokenStore]
    store_ids: np.ndarray  # (R,) int32
    row_ids: np.ndarray  # (R,) int64
    sources: list[SourceReport] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row_ids)

    def status(self) -> np.ndarray:
        """(R,) KEPT, OVERLONG or NO_TARGET of each mixed row."""
        return gather(self.stores, self.store_ids, self.row_ids, "status", np.int8)

    def truncated(self) -> np.ndarray:
        return gather(self.stores, self.store_ids, self.row_ids, "truncated", np.uint8) != 0

    def examples(self) -> Examples:
        kept = self.status() == KEPT
        return Examples(self.stores, self.store_ids[kept], self.row_ids[kept])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for source in self.sources:
            out[source.source] = out.get(source.source, 0) + source.taken
        return out

    def outcome(self) -> dict[str, int]:
        """Rows dropped as overlong, truncated, dropped for lack of target (repeats count each time)."""
        status = self.status()
        return {"overlong_dropped": int((status == OVERLONG).sum()), "overlong_truncated": int(self.truncated().sum()),
                "no_target_dropped": int((status == NO_TARGET).sum())}

    def fingerprint(self) -> str:
        """sha256 over the stores' contents and the selected (store, row) arrays, in order (16 hex digits).

        Contents, not cache keys: a source touched or copied (a new key) or re-tokenised after an edit
        of the code gives the same fingerprint when it gives the same tokens, so `--resume` accepts it.
        """
        digest = hashlib.sha256("|".join(store.content for store in self.stores).encode())
        digest.update(np.ascontiguousarray(self.store_ids, dtype=np.int32).tobytes())
        digest.update(np.ascontiguousarray(self.row_ids, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


def gather(stores: list[TokenStore], store_ids: np.ndarray, row_ids: np.ndarray, name: str, dtype) -> np.ndarray:
    """A per-row array of the stores (`lengths`, `status`, ...) at the mixture's (store, row) pairs, in order."""
    out = np.zeros(len(row_ids), dtype=dtype)
    for s, store in enumerate(stores):
        where = store_ids == s
        out[where] = getattr(store, name)[row_ids[where]]
    return out


def sample_indices(valid: np.ndarray, n: int, rng: random.Random) -> np.ndarray:
    """`sources.sample` over an index array: whole copies, then a seeded sample without replacement in file order."""
    return valid[np.asarray(sample_positions(len(valid), n, rng), dtype=np.int64)]


def select(store: TokenStore, spec: DatasetSpec, *, seed: int, on_bad_row: str) -> tuple[np.ndarray, SourceReport]:
    """The rows of one store the spec takes, and what it contributed (as `read_source`)."""
    bad = store.status == BAD
    problems = store.problems
    if on_bad_row == "error" and problems:
        raise DataError(problems[0][1])
    report = SourceReport(source=store.label, read=store.rows, skipped=int(bad.sum()), examples=bad_row_examples(store))
    valid = np.flatnonzero(~bad)
    n = len(valid) if spec.streaming else wanted(spec, len(valid))  # a stream was cut to `count` as it was read
    if n and not len(valid):
        raise DataError(f"{store.label}: no valid rows to take {n} from "
                        f"({report.skipped} of {report.read} rows malformed)")
    taken = sample_indices(valid, n, random.Random(f"{seed}|{draw_key(spec)}"))
    report.taken = len(taken)
    return taken, report


def mix_cached(data: DataSection, transform: Transform, split: str = "train",
               root: Optional[Path] = None) -> CachedMixture:
    """The recipe's `split` ("train" shuffled with the data seed, "heldout" in file order) over token stores."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    specs = getattr(data, split)
    if not specs:
        raise DataError("no data sources given")
    if data.on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {data.on_bad_row!r}")
    root = root or cache_root(data)
    stores, store_ids, row_ids, reports = [], [], [], []
    for s, spec in enumerate(specs):
        store = open_store(spec, transform, root, data.num_proc)
        taken, report = select(store, spec, seed=data.seed, on_bad_row=data.on_bad_row)
        stores.append(store)
        store_ids.append(np.full(len(taken), s, dtype=np.int32))
        row_ids.append(taken.astype(np.int64))
        reports.append(report)
    store_ids, row_ids = np.concatenate(store_ids), np.concatenate(row_ids)
    if data.shuffle and split == "train":
        order = list(range(len(row_ids)))
        random.Random(data.seed).shuffle(order)  # the permutation `mixing.mix` applies to its rows
        order = np.array(order, dtype=np.int64)
        store_ids, row_ids = store_ids[order], row_ids[order]
    return CachedMixture(stores, store_ids, row_ids, reports)
