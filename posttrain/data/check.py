"""`posttrain data check`: a recipe's data read the way its stage reads it, on a laptop (no GPU, no Ray).

Every source of the recipe's `data.train` and `data.heldout` goes through the
stage's own code. SFT: the token cache (`posttrain.data.token_cache`), so the
check tokenises each source once, into the store the run then memory-maps,
without holding its rows in memory. DPO and RLVR: `read_source` with the
stage's row adapter (the released schemas, `posttrain.data.released`) and row
validator, then the stage's tokenisation (DPO: the shared prompt and both
responses; RLVR: the generation prompt); `limit` caps the rows tokenised. The
recipe's `count`/`fraction` sampling applies to both. Per source it reports:

- rows read, valid, malformed and taken after sampling;
- the first malformed rows, as `FILE:ROW: field: problem`;
- token-length percentiles (p50, p90, p99, max) of what was taken;
- rows the length limit would drop or truncate (SFT/DPO `data.max_length`
  under `data.overlong`, DPO `dpo.max_length_diff`, RLVR
  `rollout.max_prompt_length`, whose prompts are left-truncated);
- one rendered example;
- for RLVR, the verifier mix (rows per verifier name, after aliases).

A source that cannot be read (a missing file, a misspelled column, an
unknown verifier) is an error naming it, and the check goes on with the
next source. `DataCheck.failed` is true on any error, and on malformed rows
under `data.on_bad_row: error` (the stage would stop at the first one).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from posttrain.config import DatasetSpec, StageConfig
from posttrain.data.sources import DataError, hub_label, read_source, rename_columns
from posttrain.registry import Registry

PROBLEMS_SHOWN = 5
PERCENTILES = (50, 90, 99)


@dataclass
class SourceCheck:
    """What one source gave, and what the stage would make of it."""

    label: str
    split: str
    read: int = 0
    malformed: int = 0
    taken: int = 0
    problems: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens of each row taken
    dropped: int = 0  # rows the length rules drop
    truncated: int = 0  # rows the length rules cut
    example: str = ""
    verifiers: Counter = field(default_factory=Counter)
    error: Optional[str] = None

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        values = np.percentile(np.asarray(self.lengths), PERCENTILES, method="higher")
        out = {f"p{p}": int(v) for p, v in zip(PERCENTILES, values)}
        out["max"] = int(max(self.lengths))
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("lengths", "verifiers")}
        out["length_percentiles"] = self.percentiles()
        out["verifiers"] = dict(self.verifiers)
        return out


@dataclass
class DataCheck:
    """The check of one recipe: a `SourceCheck` per source of both splits."""

    stage: str
    on_bad_row: str
    sources: list[SourceCheck] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.error for s in self.sources) or (
            self.on_bad_row == "error" and any(s.malformed for s in self.sources))

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "failed": self.failed, "sources": [s.to_dict() for s in self.sources]}

    def render(self) -> str:
        lines = [f"{self.stage} data, data.on_bad_row: {self.on_bad_row}"]
        for s in self.sources:
            lines.append(f"\n[{s.split}] {s.label}")
            if s.error:
                lines.append(f"  ERROR {s.error}")
                continue
            lines.append(f"  rows: {s.read} read, {s.read - s.malformed} valid, {s.malformed} malformed, {s.taken} taken")
            for problem in s.problems:
                lines.append(f"  bad row: {problem}")
            if s.malformed > len(s.problems):
                lines.append(f"  ... and {s.malformed - len(s.problems)} more malformed rows")
            if s.lengths:
                spread = ", ".join(f"{k} {v}" for k, v in s.percentiles().items())
                lines.append(f"  tokens: {spread}; {s.dropped} dropped and {s.truncated} truncated by the length limits")
            if s.verifiers:
                mix = ", ".join(f"{name} {count}" for name, count in s.verifiers.most_common())
                lines.append(f"  verifiers: {mix}")
            if s.example:
                lines.append("  example:\n    " + s.example.replace("\n", "\n    "))
        verdict = "FAILED" if self.failed else "ok"
        lines.append(f"\n{verdict}: {len(self.sources)} sources, {sum(s.taken for s in self.sources)} rows taken, "
                     f"{sum(s.malformed for s in self.sources)} malformed, "
                     f"{sum(1 for s in self.sources if s.error)} unreadable")
        return "\n".join(lines)


@dataclass(frozen=True)
class StageData:
    """How a stage reads and measures its rows: the adapter and validator `read_source` uses, and `measure`;
    or, for a stage that reads its sources another way (SFT: the token cache), its own `check_source`."""

    adapter: Optional[Callable[[dict], dict]]
    validate: Callable[[dict], Optional[str]]
    measure: Callable[[Sequence[dict], Any, SourceCheck], None]  # (rows taken, tokenizer, check) -> fills lengths ...
    check_source: Optional[Callable[..., SourceCheck]] = None  # (spec, split, tokenizer, seed, limit) -> check


# stage name -> fn(config) -> StageData
STAGE_DATA: Registry[Callable[[Any], StageData]] = Registry("stage data")


def check_data(config: StageConfig, tokenizer, *, limit: Optional[int] = None) -> DataCheck:
    """Read and measure every source of `config`'s data (at most `limit` taken rows each are tokenised)."""
    stage = STAGE_DATA.get(config.stage)(config)
    report = DataCheck(stage=config.stage, on_bad_row=config.data.on_bad_row)
    for split in ("train", "heldout"):
        for spec in getattr(config.data, split):
            report.sources.append(check_source(spec, split, stage, tokenizer, seed=config.data.seed, limit=limit))
    return report


def check_source(spec: DatasetSpec, split: str, stage: StageData, tokenizer, *, seed: int, limit: Optional[int]) -> SourceCheck:
    if stage.check_source is not None:
        return stage.check_source(spec, split, tokenizer, seed=seed, limit=limit)
    check = SourceCheck(label=hub_label(spec), split=split)
    try:
        rows, source = read_source(spec, stage.validate, seed=seed, on_bad_row="skip", adapt=stage.adapter)
    except (DataError, ValueError) as err:  # unreadable file, misspelled column, unknown verifier in a rename...
        check.error = str(err)
        return check
    check.label, check.read, check.malformed, check.taken = source.source, source.read, source.skipped, source.taken
    check.problems = source.examples[:PROBLEMS_SHOWN]
    try:
        stage.measure(rows[:limit] if limit else rows, tokenizer, check)
    except Exception as err:  # a row the validator passed but the stage's tokenisation refuses: name it
        check.error = f"{check.label}: tokenising failed: {type(err).__name__}: {err}"
    return check


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


# --------------------------------------------------------------------------
# The stages


def _adapter(stage: str, config) -> Optional[Callable[[dict], dict]]:
    from posttrain.data import released

    return released.stage_adapter(stage, config)


@STAGE_DATA.register("sft")
def _sft(config) -> StageData:
    """SFT sources go through the stage's token cache (posttrain/data/token_cache.py): a check tokenises a source
    once, into the store the run then memory-maps, and never holds its rows as Python objects."""
    from posttrain.data.chat import render
    from posttrain.data.sft import SFT_ROW
    from posttrain.data.token_cache import KEPT, OVERLONG, Transform, cache_root, open_source, open_store
    from posttrain.data.token_mixture import select

    def check_source(spec: DatasetSpec, split: str, tokenizer, *, seed: int, limit: Optional[int]) -> SourceCheck:
        check = SourceCheck(label=hub_label(spec), split=split)
        transform = Transform(tokenizer=tokenizer, validate_row=SFT_ROW, max_length=config.data.max_length,
                              overlong=config.data.overlong, train_on_think=config.sft.train_on_think)
        try:
            store = open_store(spec, transform, cache_root(config.data), config.data.num_proc)
            taken, source = select(store, spec, seed=seed, on_bad_row="skip")
        except (DataError, ValueError) as err:
            check.error = str(err)
            return check
        check.label, check.read, check.malformed, check.taken = source.source, source.read, source.skipped, source.taken
        check.problems = source.examples[:PROBLEMS_SHOWN]
        status = store.status[taken]
        check.lengths = store.lengths[taken[status == KEPT]].tolist()  # tokens trained on (after truncation)
        check.dropped = int((status == OVERLONG).sum()) if config.data.overlong == "drop" else 0
        check.truncated = int((store.truncated[taken] != 0).sum())
        kept = taken[status == KEPT]
        if len(kept) and not spec.streaming:  # one row read back from the source, rendered
            _, dataset, _ = open_source(spec)
            row = rename_columns([dataset[int(kept[0])]], spec.columns, check.label)[0]
            check.example = _short(render(row["messages"]), 1200)
        return check

    return StageData(None, SFT_ROW, lambda rows, tokenizer, check: None, check_source)


@STAGE_DATA.register("dpo")
def _dpo(config) -> StageData:
    from posttrain.data.chat import render
    from posttrain.data.preference import PairReport, pair_problem, tokenize_pairs

    def measure(rows: Sequence[dict], tokenizer, check: SourceCheck) -> None:
        report = PairReport(read=len(rows))
        pairs, report = tokenize_pairs(tokenizer, rows, max_length=10**12, max_length_diff=config.dpo.max_length_diff,
                                       report=report)
        check.lengths = [len(pair) for pair in pairs]
        over = sum(1 for n in check.lengths if n > config.data.max_length)
        check.dropped = report.length_diff_dropped + (over if config.data.overlong == "drop" else 0)
        check.truncated = over if config.data.overlong == "truncate" else 0
        if rows:
            row = rows[0]
            check.example = (_short(render(row["chosen"]), 800) + "\n--- rejected answer:\n"
                             + _short(row["rejected"][-1].get("content") or "", 400))

    return StageData(_adapter("dpo", config), pair_problem, measure)


@STAGE_DATA.register("rlvr")
def _rlvr(config) -> StageData:
    import rewards
    from posttrain.data.chat import generation_prompt
    from posttrain.data.rlvr import encode_prompts, verifier_name
    from posttrain.data.schemas import rlvr_row_validator

    rewards.load_plugins(config.verifiers.modules)

    def measure(rows: Sequence[dict], tokenizer, check: SourceCheck) -> None:
        limit = config.rollout.max_prompt_length
        untruncated, _ = encode_prompts(rows, tokenizer, 10**12)
        check.lengths = [len(p.ids) for p in untruncated]
        check.truncated = sum(1 for n in check.lengths if n > limit)
        check.verifiers = Counter(verifier_name(row["verifier"]) for row in rows)
        if rows:
            row = rows[0]
            check.example = (_short(generation_prompt(row["messages"]), 800)
                             + f"\n--- verifier: {_short(row['verifier'], 200)}; ground truth: {_short(row['ground_truth'])}")

    return StageData(_adapter("rlvr", config), rlvr_row_validator(rewards.names()), measure)
