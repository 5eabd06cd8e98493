"""Reference log-probs for DPO: computed once before training, cached on disk.

The reference policy of DPO is the starting checkpoint, frozen. Its summed
log-probs of every pair's chosen and rejected responses do not change during
training, so they are computed in one pass before the first step (Olmo 3 and
open-instruct's `dpo_tune_cache` do the same) and the reference model is then
not needed in memory at all.

The cache is a directory `ROOT/<key digest>/` holding `logps.safetensors`
(chosen, rejected: (N,) float32 summed over response tokens; chosen_lengths,
rejected_lengths: (N,) int64 response token counts; row i is pair i of the
tokenized dataset) and `key.json`. The key is the reference checkpoint's
content hash, the data fingerprint (every pair's token ids, in order) and the
maximum length, so a different checkpoint, data, order or truncation never
reuses stale numbers, and a rerun of the same recipe does. It is written to a
temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor

from posttrain.checkpoints import atomic_dir, checkpoint_hash, read_json
from posttrain.data.batches import PreferenceBatch
from posttrain.data.preference import TokenizedPair, collate

LOGPS_FILE = "logps.safetensors"
KEY_FILE = "key.json"
FORMAT_VERSION = 1  # bump when what is cached changes meaning


@dataclass
class ReferenceLogps:
    """Reference log-probs of N pairs; row i belongs to pair i."""

    chosen: Tensor  # (N,) float32 summed over chosen response tokens
    rejected: Tensor  # (N,) float32 summed over rejected response tokens
    chosen_lengths: Tensor  # (N,) int64
    rejected_lengths: Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.chosen.shape[0]

    def pair(self) -> tuple[Tensor, Tensor]:
        """(chosen, rejected), the form `posttrain.data.preference.collate` takes."""
        return self.chosen, self.rejected

    def tensors(self) -> dict[str, Tensor]:
        return {
            "chosen": self.chosen.float().contiguous(),
            "rejected": self.rejected.float().contiguous(),
            "chosen_lengths": self.chosen_lengths.long().contiguous(),
            "rejected_lengths": self.rejected_lengths.long().contiguous(),
        }


def cache_key(reference: str | Path, data_fingerprint: str, max_length: int, *, split: str = "train") -> dict:
    """What the cached numbers depend on (the checkpoint is hashed by content; see `checkpoints.checkpoint_hash`)."""
    return {
        "format": FORMAT_VERSION,
        "reference_hash": checkpoint_hash(reference),
        "data_fingerprint": data_fingerprint,
        "max_length": int(max_length),
        "split": split,
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(root: str | Path, key: dict) -> Path:
    return Path(root) / key_digest(key)


def load(root: str | Path, key: dict) -> Optional[ReferenceLogps]:
    """The cached log-probs for `key`, or None when there is no complete entry for it."""
    from safetensors.torch import load_file

    path = cache_path(root, key)
    if not (path / KEY_FILE).is_file() or not (path / LOGPS_FILE).is_file():
        return None
    if read_json(path / KEY_FILE) != key:  # a digest collision or a hand-edited entry
        return None
    tensors = load_file(str(path / LOGPS_FILE))
    return ReferenceLogps(**tensors)


def save(root: str | Path, key: dict, logps: ReferenceLogps) -> Path:
    """Write the entry for `key` atomically (temporary directory, then rename)."""
    from safetensors.torch import save_file

    with atomic_dir(cache_path(root, key)) as tmp:
        save_file(logps.tensors(), str(tmp / LOGPS_FILE))
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return cache_path(root, key)


def from_results(results: Iterable[dict], pairs: Sequence[TokenizedPair]) -> ReferenceLogps:
    """Assemble per-batch results `{"index": [...], "chosen": [...], "rejected": [...]}` (any order, repeats allowed).

    Every pair must be covered; lengths are the pairs' response token counts.
    """
    chosen = torch.full((len(pairs),), float("nan"))
    rejected = torch.full((len(pairs),), float("nan"))
    for result in results:
        index = torch.tensor(result["index"], dtype=torch.long)
        keep = index >= 0  # -1 marks the filler rows of an idle rank
        chosen[index[keep]] = torch.tensor(result["chosen"], dtype=torch.float32)[keep]
        rejected[index[keep]] = torch.tensor(result["rejected"], dtype=torch.float32)[keep]
    missing = torch.isnan(chosen) | torch.isnan(rejected)
    if missing.any():
        raise RuntimeError(f"reference log-probs missing for {int(missing.sum())} of {len(pairs)} pairs")
    lengths = {side: torch.tensor([len(getattr(p, side)) for p in pairs], dtype=torch.long)
               for side in ("chosen", "rejected")}
    return ReferenceLogps(chosen, rejected, lengths["chosen"], lengths["rejected"])


def compute(
    batch_logps: Callable[[PreferenceBatch], tuple[Tensor, Tensor]],
    pairs: Sequence[TokenizedPair],
    batch_size: int,
    pad_id: int,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> ReferenceLogps:
    """In-process reference pass: `batch_logps(batch) -> (chosen (B,), rejected (B,))` over all pairs, in order.

    `batch_logps` runs the reference model without gradients. (The DPO stage
    runs the same pass on its learner ranks, before the first update.)
    """
    results = []
    starts = range(0, len(pairs), batch_size)
    for start in progress(starts) if progress else starts:
        indices = list(range(start, min(start + batch_size, len(pairs))))
        with torch.no_grad():
            chosen, rejected = batch_logps(collate(pairs, indices, pad_id))
        results.append({"index": indices, "chosen": chosen.float().cpu().tolist(),
                        "rejected": rejected.float().cpu().tolist()})
    return from_results(results, pairs)


def cached_or_compute(root: str | Path, key: dict, make: Callable[[], ReferenceLogps]) -> tuple[ReferenceLogps, bool]:
    """(log-probs, True) from the cache, or (make(), False) after saving what `make` computed."""
    found = load(root, key)
    if found is not None:
        return found, True
    logps = make()
    save(root, key, logps)
    return logps, False
