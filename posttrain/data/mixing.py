"""Seeded mixtures: several sources, each by count or fraction, into one deterministic list of rows.

Each source is read by `posttrain.data.sources.read_source` (validated and
sampled with a seed derived from the data seed and the source), the parts are
concatenated in recipe order, then shuffled with the data seed. The same
recipe therefore gives the same rows in the same order on every machine;
another seed gives another order (and other samples). `Mixture.report()`
says how many rows each source gave and how many malformed rows were skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from posttrain.config import DataSection, DatasetSpec
from posttrain.data.sources import DataError, RowAdapter, RowValidator, SourceReport, read_source

if TYPE_CHECKING:
    import datasets


@dataclass
class Mixture:
    """The mixed rows and, per source, what it contributed."""

    rows: list[dict]
    sources: list[SourceReport] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def skipped(self) -> int:
        return sum(source.skipped for source in self.sources)

    def counts(self) -> dict[str, int]:
        """Rows taken per source label (sources named twice are summed)."""
        out: dict[str, int] = {}
        for source in self.sources:
            out[source.source] = out.get(source.source, 0) + source.taken
        return out

    def report(self) -> str:
        lines = [f"{len(self.rows)} rows from {len(self.sources)} sources"]
        lines += [f"  {source.describe()}" for source in self.sources]
        return "\n".join(lines)

    def to_dataset(self) -> "datasets.Dataset":
        """The rows as a `datasets.Dataset` (columns missing from some rows read as None)."""
        import datasets

        return datasets.Dataset.from_list(self.rows)


def mix(
    specs: Sequence[DatasetSpec],
    validate_row: RowValidator,
    *,
    seed: int = 0,
    on_bad_row: str = "error",
    shuffle: bool = True,
    adapt: Optional[RowAdapter] = None,
) -> Mixture:
    """Read every source (through `adapt`, if given), concatenate in order, shuffle with `seed`."""
    if not specs:
        raise DataError("no data sources given")
    rows: list[dict] = []
    reports = []
    for spec in specs:
        part, report = read_source(spec, validate_row, seed=seed, on_bad_row=on_bad_row, adapt=adapt)
        rows.extend(part)
        reports.append(report)
    if shuffle:
        random.Random(seed).shuffle(rows)
    return Mixture(rows=rows, sources=reports)


def mix_section(data: DataSection, validate_row: RowValidator, split: str = "train",
                adapt: Optional[RowAdapter] = None) -> Mixture:
    """The mixture a recipe's `data:` section describes: `split` is "train" or "heldout".

    Held-out rows are not shuffled, so evaluations read them in file order.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    specs = getattr(data, split)
    return mix(specs, validate_row, seed=data.seed, on_bad_row=data.on_bad_row, shuffle=data.shuffle and split == "train",
               adapt=adapt)
