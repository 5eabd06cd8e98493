"""One dataset source (a recipe's `DatasetSpec`) -> validated, sampled rows.

A source is a local file (`.jsonl`, `.json`, `.parquet`, `.arrow`), a local
directory holding one file per split (`DIR/train.jsonl`, `DIR/heldout.parquet`,
shards `DIR/train-00000-of-00002.parquet`, or a `save_to_disk` folder
`DIR/train/`), or a hub dataset name (at `revision`, when given; with
`streaming: true`, only the first `count` rows are read from the hub). All of
them load through `datasets`.

Then, in order:
1. `columns` renames source columns to the names the format expects.
2. The stage's row adapter, if any (`posttrain.data.released`), turns a released
   schema into the stage's row shape (an Olmo 3 RL row's `prompt`, `dataset`
   and `ground_truth` lists into `messages`, `verifier` and `ground_truth`); it
   raises `RowProblem("field: problem")` for a row it cannot read.
3. Every row is checked by the caller's row validator (`posttrain.data.schemas`):
   a bad row fails as `FILE:LINE: field: problem` (the 1-based line for JSON
   lines, `FILE:row N` otherwise), or with `on_bad_row="skip"` is dropped and
   counted in the returned `SourceReport`.
4. `count` / `fraction` sample the valid rows with a seed derived from the data
   seed and the source's name (`draw_key`: the file name, not where it sits),
   so a source draws the same rows whatever else is in the mixture and
   wherever the data was built or copied to. Above the source's size the rows
   are repeated whole, then topped up with a sample: fraction 2.5 of 10 rows
   is every row twice plus 5 more.
   Sampled rows keep their file order (`posttrain.data.mixing` shuffles).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from posttrain.checkpoints import resolve_revision
from posttrain.config import DatasetSpec

RowValidator = Callable[[dict], Optional[str]]
RowAdapter = Callable[[dict], dict]
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}  # suffix -> datasets builder
EXAMPLES_KEPT = 5  # skip reasons kept in a report, to show what was wrong without flooding the log


class DataError(ValueError):
    """Unusable data; the message names the file (and row and field where there is one)."""


class RowProblem(ValueError):
    """Raised by a row adapter for a row it cannot read: the message is `field: problem`."""


@dataclass
class SourceReport:
    """What one source contributed: rows read, skipped as malformed, taken after sampling."""

    source: str
    read: int = 0
    skipped: int = 0
    taken: int = 0
    examples: list[str] = field(default_factory=list)  # the first few skip reasons

    def describe(self) -> str:
        text = f"{self.source}: {self.taken} rows taken of {self.read - self.skipped} valid"
        if self.skipped:
            text += f" ({self.skipped} malformed rows skipped, e.g. {self.examples[0]})"
        return text


def read_source(
    spec: DatasetSpec, validate_row: RowValidator, *, seed: int = 0, on_bad_row: str | Callable[[str], str] = "error",
    adapt: Optional[RowAdapter] = None,
) -> tuple[list[dict], SourceReport]:
    """Load, rename, adapt, validate and sample one source; see the module docstring.

    `on_bad_row` may also map each problem to "error" or "skip" (a stage with
    two policies, such as DPO's malformed rows and bad pairs).
    """
    if not callable(on_bad_row) and on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    label, rows, locate = load_rows(spec)
    if spec.streaming:  # a hub stream was cut as it was read; a local file is cut here, as the SFT cache cuts it
        rows = rows[:spec.count]
    rows = rename_columns(rows, spec.columns, label)
    report = SourceReport(source=label, read=len(rows))
    valid = []
    for index, row in enumerate(rows):
        try:
            row = adapt(row) if adapt is not None else row
            problem = validate_row(row)
        except RowProblem as err:
            problem = str(err)
        if problem is None:
            valid.append(row)
            continue
        where = f"{locate(index)}: {problem}"
        if (on_bad_row(problem) if callable(on_bad_row) else on_bad_row) == "error":
            raise DataError(where)
        report.skipped += 1
        if len(report.examples) < EXAMPLES_KEPT:
            report.examples.append(where)
    n = len(valid) if spec.streaming else wanted(spec, len(valid))  # a stream was cut to `count` as it was read
    if n and not valid:
        raise DataError(f"{label}: no valid rows to take {n} from ({report.skipped} of {report.read} rows malformed)")
    taken = sample(valid, n, random.Random(f"{seed}|{draw_key(spec)}"))
    report.taken = len(taken)
    return taken, report


def wanted(spec: DatasetSpec, available: int) -> int:
    """Rows a spec asks for out of `available`: count, round(fraction * available), or all."""
    if spec.count is not None:
        return spec.count
    if spec.fraction is not None:
        return round(spec.fraction * available)
    return available


def draw_key(spec: DatasetSpec) -> str:
    """What seeds a source's sample besides the data seed: its name without the directories above it.

    A local source is named by its last path component plus the split, so the
    same file draws the same rows from `runs/tiny/data/` or a test's temporary
    copy; a hub dataset by its name, config and split.
    """
    if _is_local(spec.path):
        return f"{Path(spec.path).expanduser().name}[{spec.split}]"
    return hub_label(spec)


def sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """`n` rows: whole copies while n exceeds the rows, then a seeded sample without replacement, in file order."""
    return [dict(rows[i]) for i in sample_positions(len(rows), n, rng)]  # copies: a repeat is its own row


def sample_positions(size: int, n: int, rng: random.Random) -> list[int]:
    """Which of `size` rows `n` draws take, as positions: every row per whole copy, then a seeded sample in order."""
    if not size:
        return []
    copies, rest = divmod(n, size)
    return list(range(size)) * copies + sorted(rng.sample(range(size), rest))


def rename_columns(rows: list[dict], columns: dict[str, str], label: str) -> list[dict]:
    """Apply `{source_name: expected_name}`; a source column that is absent fails naming the columns present."""
    if not columns or not rows:
        return rows
    check_columns(columns, list(rows[0]), label)
    return [{columns.get(key, key): value for key, value in row.items()} for row in rows]


def check_columns(columns: dict[str, str], present: list[str], label: str) -> None:
    """`{source_name: expected_name}` must rename columns that exist, without overwriting others."""
    for src, dst in columns.items():
        if src not in present:
            raise DataError(f"{label}: columns: no column {src!r} to rename to {dst!r} (columns: {', '.join(sorted(present))})")
        if dst in present and dst not in columns:
            raise DataError(f"{label}: columns: renaming {src!r} to {dst!r} would overwrite the existing column {dst!r}")


# --------------------------------------------------------------------------
# Loading


def local_path(spec: DatasetSpec) -> Optional[Path]:
    """A local source's file, shard pattern or `save_to_disk` folder; None for a hub dataset.

    A directory of splits gives its `spec.split` file; a missing path that can
    only be local (`_looks_local`) is a DataError.
    """
    path = Path(spec.path).expanduser()
    if path.is_dir():
        return split_file(path, spec.split)
    if path.exists():
        return path
    if _looks_local(spec.path):
        raise DataError(f"{spec.path}: no such file or directory")
    return None


def load_rows(spec: DatasetSpec) -> tuple[str, list[dict], Callable[[int], str]]:
    """(label, rows, locate): `locate(i)` names row i for error messages (`FILE:LINE` or `FILE:row N`)."""
    path = local_path(spec)
    if path is None:
        return load_hub(spec)
    if path.is_dir():  # a `save_to_disk` folder
        import datasets

        rows = datasets.load_from_disk(str(path)).to_list()
        return str(path), rows, lambda i: f"{path}:row {i + 1}"
    return load_file(path)


def split_file(directory: Path, split: str) -> Path:
    """The file (or saved-dataset folder) holding `split` inside a directory of splits."""
    candidates = [directory / f"{split}{suffix}" for suffix in FORMATS]
    candidates.append(directory / split)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    shards = sorted(p for p in directory.glob(f"{split}-*") if p.suffix in FORMATS)
    if shards:
        return shards[0] if len(shards) == 1 else directory / f"{split}-*{shards[0].suffix}"
    present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise DataError(f"{directory}: no {split!r} split (looked for {split}.jsonl/.json/.parquet/.arrow, {split}/, {split}-*; found: {present})")


def _is_local(name: str) -> bool:
    """A path that is (or, missing, can only be) a local file or directory rather than a hub name."""
    return Path(name).expanduser().exists() or _looks_local(name)


def _looks_local(name: str) -> bool:
    """A missing path that cannot be a hub name (it has a data suffix or starts like a file path)."""
    return Path(name).suffix in FORMATS or name.startswith(("/", "./", "../", "~"))


def load_file(path: Path) -> tuple[str, list[dict], Callable[[int], str]]:
    """Rows of a local file (or a shard pattern `DIR/train-*.parquet`) through `datasets`."""
    import datasets

    builder = FORMATS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FORMATS)})")
    files = sorted(path.parent.glob(path.name)) if "*" in path.name else [path]
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # datasets wraps parse errors into an opaque one; find the line ourselves
        raise DataError(_unreadable(files, err)) from None
    rows = dataset.to_list()
    lines = _json_lines(files[0]) if builder == "json" and len(files) == 1 else None
    if lines is not None and len(lines) == len(rows):
        return str(path), rows, lambda i: f"{path}:{lines[i]}"
    return str(path), rows, lambda i: f"{path}:row {i + 1}"


def _json_lines(path: Path) -> Optional[list[int]]:
    """1-based numbers of the non-blank lines of a JSON-lines file (None for a JSON array file)."""
    with path.open("rb") as handle:
        numbers = [number for number, line in enumerate(handle, 1) if line.strip()]
        handle.seek(0)
        first = handle.read(64).lstrip()
    return None if first.startswith(b"[") else numbers


def _unreadable(files: list[Path], err: Exception) -> str:
    """An error message for files `datasets` could not read: the first bad JSON line when there is one."""
    for path in files:
        if FORMATS.get(path.suffix) == "json" and _json_lines(path) is not None:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line.rstrip("\r\n"))
                    except json.JSONDecodeError as bad:
                        return f"{path}:{number}: not valid JSON: {bad.msg} (column {bad.colno})"
                    if not isinstance(value, dict):
                        return f"{path}:{number}: expected a JSON object per line, got {type(value).__name__}"
    cause = err.__cause__ or err
    return f"{', '.join(map(str, files))}: cannot read: {type(cause).__name__}: {cause}"


def source_identity(spec: DatasetSpec) -> dict:
    """What pins a source's content, for the token cache's key.

    A local file (or every file of a directory split or shard pattern): its
    name, size and modification time (content hashing would read every byte
    of a multi-GB source on each run). A hub dataset: its name, config, split
    and the commit its `revision` resolves to (`resolve_revision`).
    """
    path = local_path(spec)
    if path is not None:
        files = sorted(path.parent.glob(path.name)) if "*" in path.name else [path]
        if files and files[0].is_dir():  # a save_to_disk folder
            files = sorted(f for f in files[0].rglob("*") if f.is_file())
        stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return {"path": str(path.resolve()), "split": spec.split, "files": stats}
    return {"hub": spec.path, "name": spec.name, "split": spec.split, "revision": resolve_revision(spec)}


def hub_label(spec: DatasetSpec) -> str:
    """A hub source as messages name it: `NAME/CONFIG[SPLIT]`."""
    return f"{spec.path}" + (f"/{spec.name}" if spec.name else "") + f"[{spec.split}]"


def open_hub(spec: DatasetSpec):
    """A hub dataset at the spec's revision (an `IterableDataset` with `streaming`), or a DataError naming it."""
    import datasets

    try:
        return datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision,
                                     streaming=spec.streaming)
    except Exception as err:
        raise DataError(f"{hub_label(spec)}: not a local file or directory, and loading it as a hub dataset failed: "
                        f"{type(err).__name__}: {err}") from None


def load_hub(spec: DatasetSpec) -> tuple[str, list[dict], Callable[[int], str]]:
    """Rows of a hub dataset (needs network, or the datasets cache with HF_HUB_OFFLINE=1)."""
    label = hub_label(spec)
    dataset = open_hub(spec)
    try:
        rows = list(dataset.take(spec.count)) if spec.streaming else dataset.to_list()
    except Exception as err:  # a stream fails while it is read
        raise DataError(f"{label}: reading the hub dataset failed: {type(err).__name__}: {err}") from None
    return label, rows, lambda i: f"{label}:row {i + 1}"
