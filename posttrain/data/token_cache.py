"""Tokenised SFT sources on disk: each source tokenised once, memory-mapped by every later run and `--resume`.

One store per source (a recipe's `DatasetSpec`) under `CACHE/<key>/`, where
CACHE is `data.cache_dir`, else $POSTTRAIN_CACHE, else ~/.cache/posttrain/tokens:

    tokens.bin    int32, every kept example's token ids back to back
    mask.bin      uint8, 1 where the token carries loss (labels = ids there, -100 elsewhere)
    offsets.npy   int64 (rows + 1,), example i is tokens[offsets[i]:offsets[i + 1]] (empty if not kept)
    status.npy    int8 per source row: KEPT, BAD (malformed), OVERLONG (dropped), NO_TARGET (dropped)
    truncated.npy uint8 per source row: cut to max_length (data.overlong: truncate)
    targets.npy   int32 per source row: loss tokens after position 0 (position 0 is never predicted)
    report.json   the source's label, row count, key inputs and its bad rows as `FILE:LINE: field: problem`

Row indices are the source's own rows in file order (bad and dropped rows
included), so sampling (`posttrain.data.token_mixture`) picks from the same
valid rows as `posttrain.data.sources.read_source`.

The key hashes everything the arrays depend on: the tokenizer's serialised
content (not its path), its chat template, the source files of the
renderer, validator and adapter (`code_digest`), `source_identity` (local files by name, size and
mtime; hub datasets by resolved revision), columns, max_length, overlong,
train_on_think, the validator and adapter by name, a streamed source's count,
and `TRANSFORM_VERSION` (bump it when the transform below changes).

Building: `datasets.Dataset.map(batched=True, num_proc=P)` over the Arrow
table (never a Python list of the whole source). Per batch: rename columns,
adapt, validate, render (`render_with_spans`), ONE fast-tokenizer call with
offsets for the whole batch, assistant and think masks from the character
spans with numpy (`searchsorted`, no per-token Python loop), then the overlong
policy. The result is tokenize_row's, token for token
(tests/data/test_token_cache.py). A store is built in `CACHE/.tmp-<key>-*`
and renamed into place when complete: a killed build leaves only a temporary
directory, which no run reads. A streamed source (`streaming: true`) is read
as an `IterableDataset`, its first `count` rows, in one process.
Under `data.on_bad_row: error` the build stops at the first malformed row
(`FILE:LINE: field: problem`, found in whichever batch holds it) and caches
nothing; under `skip` every bad row is kept in report.json and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from posttrain.config import DataSection, DatasetSpec
from posttrain.data.batches import IGNORE_INDEX
from posttrain.data.chat import ChatFormatError, render_with_spans, think_spans
from posttrain.data.sources import (EXAMPLES_KEPT, FORMATS, DataError, RowAdapter, RowProblem, RowValidator,
                                    _json_lines, _unreadable, check_columns, hub_label, local_path, open_hub,
                                    source_identity)

TRANSFORM_VERSION = 1  # bump when encode_batch's output changes for the same inputs
KEPT, BAD, OVERLONG, NO_TARGET = 0, 1, 2, 3  # status of a source row
BATCH_ROWS = 1000  # rows per tokenizer call (and per map batch)
MIN_ROWS_PER_PROCESS = 500  # a small source is not worth starting processes for
MAX_PROCESSES = 16
STOP_FILE = ".bad-row"  # in the build directory: [row, problem] of the bad row that stopped the build


@dataclass(frozen=True)
class Transform:
    """What turns one source row into a training example (what the key hashes besides the source)."""

    tokenizer: Any
    validate_row: RowValidator
    max_length: int
    overlong: str  # "drop" or "truncate"
    train_on_think: bool
    adapt: Optional[RowAdapter] = None
    stop_at_bad_row: bool = False  # data.on_bad_row: error: the build stops at the first one (not in the key:
    # a store is only ever written whole, and with this set only when the source has no bad row)
    stop_file: Optional[str] = None  # where a process that met a bad row says so, for the others to stop too

    def identity(self) -> dict:
        return {"version": TRANSFORM_VERSION, "tokenizer": tokenizer_digest(self.tokenizer),
                "chat_template": self.tokenizer.chat_template,
                "validator": _name(self.validate_row), "adapter": _name(self.adapt) if self.adapt else None,
                "code": code_digest([render_with_spans, self.validate_row, self.adapt]),
                "max_length": self.max_length, "overlong": self.overlong, "train_on_think": self.train_on_think}


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the tokenizer's content: tokenizer.json for a fast tokenizer, else class and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = json.loads(backend.to_str())
        content.pop("truncation", None), content.pop("padding", None)  # settings a call left behind, not content
        text = json.dumps(content, sort_keys=True)
    else:
        text = type(tokenizer).__name__ + json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def code_digest(functions: list[Optional[Callable]]) -> str:
    """sha256 of the source files that define `functions` and the functions their closures hold.

    A validator is often `all_of(a, b)`: its closure names the modules of a and
    b. Editing the renderer, a validator or an adapter thus makes a new key
    with no version to remember; TRANSFORM_VERSION covers this module.
    """
    files = set()
    pending = [f for f in functions if f is not None]
    while pending:
        fn = pending.pop()
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if getattr(module, "__file__", None):
            files.add(module.__file__)
        for cell in getattr(fn, "__closure__", None) or ():
            inner = cell.cell_contents
            pending.extend(inner if isinstance(inner, (list, tuple)) else [inner])
        pending = [f for f in pending if callable(f) and getattr(f, "__module__", None) not in (None, "builtins")]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def cache_root(data: DataSection) -> Path:
    """`data.cache_dir`, else $POSTTRAIN_CACHE, else ~/.cache/posttrain/tokens."""
    return Path(data.cache_dir or os.environ.get("POSTTRAIN_CACHE") or "~/.cache/posttrain/tokens").expanduser()


def cache_key(spec: DatasetSpec, transform: Transform) -> str:
    """24 hex digits of sha256 over the source's identity, its columns and the transform (module docstring)."""
    parts = {"source": source_identity(spec), "columns": spec.columns, "transform": transform.identity(),
             "streamed_count": spec.count if spec.streaming else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- the store


class TokenStore:
    """One source's cached examples, memory-mapped (see the module docstring for the files)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.report = json.loads((directory / "report.json").read_text())
        self.key, self.label, self.rows = self.report["key"], self.report["label"], self.report["rows"]
        self.content = self.report.get("content", self.key)  # sha256 of every row's length, tokens and mask
        self.offsets = np.load(directory / "offsets.npy", mmap_mode="r")
        self.tokens = _memmap(directory / "tokens.bin", np.int32)
        self.mask = _memmap(directory / "mask.bin", np.uint8)

    # the per-row arrays the driver's mixture reads; a learner rank reading its micro-batches needs only the above
    @cached_property
    def status(self) -> np.ndarray:
        return np.load(self.directory / "status.npy")

    @cached_property
    def truncated(self) -> np.ndarray:
        return np.load(self.directory / "truncated.npy")

    @cached_property
    def targets(self) -> np.ndarray:
        return np.load(self.directory / "targets.npy")

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int64)  # 0 where the row was not kept

    @property
    def problems(self) -> list[tuple[int, str]]:
        """(row, `FILE:LINE: field: problem`) of every malformed row, in file order."""
        return [(int(i), text) for i, text in self.report["problems"]]

    def example(self, row: int) -> dict[str, list[int]]:
        """input_ids and labels of a kept row, read from the memory map."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        ids = np.asarray(self.tokens[start:end], dtype=np.int64)
        labels = np.where(self.mask[start:end] != 0, ids, IGNORE_INDEX)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}


def _memmap(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_store(spec: DatasetSpec, transform: Transform, root: Path, num_proc: Optional[int] = None) -> TokenStore:
    """The source's store: from the cache when its key is there, else tokenised now (and cached)."""
    key = cache_key(spec, transform)
    directory = root / key
    if (directory / "report.json").exists():
        store = TokenStore(directory)
        print(f"[data] {store.label}: cache hit, {store.rows} rows, {int(store.offsets[-1])} tokens ({directory})")
        return store
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))  # never read: only `root/<key>` is
    try:
        build(spec, transform, key, tmp, num_proc)
        try:
            os.rename(tmp, directory)
        except OSError:  # another run finished the same store first; theirs is as good
            if not (directory / "report.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenStore(directory)


def build(spec: DatasetSpec, transform: Transform, key: str, out: Path, num_proc: Optional[int]) -> None:
    """Tokenise the whole source into `out` (see the module docstring); report.json is written last."""
    label, dataset, locate = open_source(spec)
    columns = dict(spec.columns)
    present = dataset.column_names
    if present is not None:
        check_columns(columns, present, label)
    writer = StoreWriter(out)
    if spec.streaming:
        stream = dataset.take(spec.count)  # the schema requires count with streaming
        print(f"[data] {label}: tokenising a stream ({spec.count} rows) with 1 process")
        try:
            for batch in stream.iter(batch_size=BATCH_ROWS):
                writer.add(encode_batch(batch, range(writer.rows, writer.rows + len(next(iter(batch.values())))),
                                        transform, columns))
        except BadRow as bad:
            raise DataError(f"{locate(bad.index)}: {bad.problem}") from None
    else:
        processes = min(num_proc or min(os.cpu_count() or 1, MAX_PROCESSES),
                        max(1, len(dataset) // MIN_ROWS_PER_PROCESS))
        print(f"[data] {label}: tokenising {len(dataset)} rows with {processes} processes")
        stop = out / STOP_FILE
        try:
            mapped = dataset.map(
                encode_batch, batched=True, with_indices=True, batch_size=BATCH_ROWS,
                fn_kwargs={"transform": replace(transform, stop_file=str(stop)), "columns": columns},
                remove_columns=present, num_proc=processes if processes > 1 else None,
                cache_file_name=str(out / "map.arrow"), load_from_cache_file=False, new_fingerprint=key,
                desc=f"tokenising {label}")
        except (BadRow, Stopped) as err:  # data.on_bad_row: error: stop at the first, not after the whole source
            index, problem = json.loads(stop.read_text()) if stop.exists() else (err.index, err.problem)
            raise DataError(f"{locate(index)}: {problem}") from None
        for table in mapped.with_format("arrow").iter(batch_size=10 * BATCH_ROWS):
            writer.add(table)
        del mapped
        for path in out.glob("map*.arrow"):
            path.unlink()
    writer.finish({"key": key, "label": label, "identity": source_identity(spec), "columns": spec.columns,
                   "transform": {k: v for k, v in transform.identity().items()}}, locate)


class BadRow(ValueError):
    """Raised while tokenising under `stop_at_bad_row`: source row `index` (0-based) and its problem."""

    def __init__(self, index: int, problem: str):
        super().__init__(index, problem)
        self.index, self.problem = index, problem


class Stopped(BadRow):
    """Raised by a tokenising process that finds another one's bad row in the stop file: it stops too."""


class StoreWriter:
    """Appends encoded batches to the flat files, then writes the per-row arrays and report.json."""

    def __init__(self, out: Path):
        self.out = out
        self.tokens = (out / "tokens.bin").open("wb")
        self.mask = (out / "mask.bin").open("wb")
        self.parts: dict[str, list[np.ndarray]] = {"length": [], "status": [], "truncated": [], "targets": []}
        self.content = hashlib.sha256()  # of what training reads: a fingerprint that survives a re-tokenise
        self.problems: list[tuple[int, str]] = []
        self.rows = 0

    def add(self, table) -> None:
        """One encoded batch (a pyarrow table with `encode_batch`'s columns)."""
        tokens, mask = _flat(table.column("ids"), np.int32).tobytes(), _flat(table.column("mask"), np.uint8).tobytes()
        self.tokens.write(tokens)
        self.mask.write(mask)
        self.content.update(table.column("length").to_numpy().astype(np.int64).tobytes())
        self.content.update(tokens)
        self.content.update(mask)
        for name in self.parts:
            self.parts[name].append(table.column(name).to_numpy())
        for i, problem in enumerate(table.column("problem").to_pylist()):
            if problem is not None:
                self.problems.append((self.rows + i, problem))
        self.rows += table.num_rows

    def finish(self, report: dict, locate: Callable[[int], str]) -> None:
        self.tokens.close()
        self.mask.close()
        arrays = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in self.parts.items()}
        offsets = np.zeros(self.rows + 1, dtype=np.int64)
        np.cumsum(arrays["length"], out=offsets[1:])
        np.save(self.out / "offsets.npy", offsets)
        np.save(self.out / "status.npy", arrays["status"].astype(np.int8))
        np.save(self.out / "truncated.npy", arrays["truncated"].astype(np.uint8))
        np.save(self.out / "targets.npy", arrays["targets"].astype(np.int32))
        report.update(rows=self.rows, content=self.content.hexdigest()[:24],
                      problems=[(i, f"{locate(i)}: {p}") for i, p in self.problems])
        (self.out / "report.json").write_text(json.dumps(report, indent=1, default=str))


def _flat(column, dtype) -> np.ndarray:
    """The values of a list column (chunked pyarrow), flattened, as numpy."""
    chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- the transform


def encode_batch(batch: dict[str, list], indices, transform: Transform, columns: dict[str, str]):
    """A batch of source rows ({column: values}) -> ids, mask, length, status, truncated, targets, problem (pyarrow table)."""
    import pyarrow as pa

    if transform.stop_file and os.path.exists(transform.stop_file):
        raise Stopped(-1, "another process met a bad row")
    names = [columns.get(name, name) for name in batch]
    rows = [dict(zip(names, values)) for values in zip(*batch.values())]  # the dicts `Dataset.to_list()` gives
    problems: list[Optional[str]] = [None] * len(rows)
    texts, spans, good = [], [], []
    for i, row in enumerate(rows):
        try:
            row = transform.adapt(row) if transform.adapt is not None else row
            problems[i] = transform.validate_row(row)
            if problems[i] is None:
                text, turn_spans = render_with_spans(row["messages"])
                texts.append(text)
                spans.append(turn_spans)
                good.append(i)
        except (RowProblem, ChatFormatError) as err:
            problems[i] = str(err)
        if problems[i] is not None and transform.stop_at_bad_row:
            if transform.stop_file:  # the other processes see it at their next batch
                Path(transform.stop_file).write_text(json.dumps([int(indices[i]), problems[i]]))
            raise BadRow(int(indices[i]), problems[i])
    ids, mask, lengths = tokenize_masked(transform.tokenizer, texts, spans, transform.train_on_think)
    n = len(rows)
    status = np.where([p is None for p in problems], KEPT, BAD).astype(np.int8) if n else np.zeros(0, np.int8)
    truncated, targets = np.zeros(n, np.uint8), np.zeros(n, np.int32)
    out_ids: list = [np.zeros(0, np.int32)] * n
    out_mask: list = [np.zeros(0, np.uint8)] * n
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for j, i in enumerate(good):
        row_ids, row_mask = ids[bounds[j]:bounds[j + 1]], mask[bounds[j]:bounds[j + 1]]
        if len(row_ids) > transform.max_length:
            if transform.overlong == "drop":
                status[i] = OVERLONG
                continue
            row_ids, row_mask, truncated[i] = row_ids[:transform.max_length], row_mask[:transform.max_length], 1
        targets[i] = int(row_mask[1:].sum())  # position 0 is never predicted: a target there alone teaches nothing
        if targets[i] == 0:
            status[i] = NO_TARGET
            continue
        out_ids[i], out_mask[i] = row_ids, row_mask
    length = np.array([len(a) for a in out_ids], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(length)]).astype(np.int32))
    flat_ids = np.concatenate(out_ids) if n else np.zeros(0, np.int32)
    flat_mask = np.concatenate(out_mask) if n else np.zeros(0, np.uint8)
    return pa.table({
        "ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids.astype(np.int32))),
        "mask": pa.ListArray.from_arrays(offsets, pa.array(flat_mask.astype(np.uint8))),
        "length": pa.array(length.astype(np.int32)), "status": pa.array(status), "truncated": pa.array(truncated),
        "targets": pa.array(targets), "problem": pa.array(problems, type=pa.string()),
    })


def tokenize_masked(tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], train_on_think: bool):
    """One tokenizer call for `texts`: (ids int32, mask uint8, tokens per text), flat over the batch.

    A token carries loss when its first character lies in an assistant span
    and it is not empty (as `tokenize_conversation`), and, without
    `train_on_think`, not in the span's leading `<think>...</think>` (as
    `tokenize_row`). Texts are laid end to end in one character coordinate
    so one `searchsorted` over all spans finds each token's span.
    """
    if not texts:
        return np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int64)
    token_ids, token_offsets = _encode(tokenizer, texts)
    counts = np.fromiter((len(x) for x in token_ids), dtype=np.int64, count=len(texts))
    total = int(counts.sum())
    ids = np.fromiter(chain.from_iterable(token_ids), dtype=np.int32, count=total)
    offsets = np.fromiter(chain.from_iterable(chain.from_iterable(token_offsets)), dtype=np.int64,
                          count=2 * total).reshape(total, 2)
    base = np.concatenate([[0], np.cumsum([len(t) for t in texts])[:-1]])  # where each text starts
    starts = offsets[:, 0] + np.repeat(base, counts)
    target = _inside(starts, [(a + b0, b + b0) for b0, row in zip(base, spans) for a, b in row])
    target &= offsets[:, 1] > offsets[:, 0]
    if not train_on_think:
        think = [(a + b0, b + b0) for b0, text, row in zip(base, texts, spans) for a, b in think_spans(text, row)]
        target &= ~_inside(starts, think)
    return ids, target.astype(np.uint8), counts


def _encode(tokenizer, texts: list[str]) -> tuple[list, list]:
    """Token ids and character offsets of each text, as `tokenizer(texts, add_special_tokens=False)` gives them.

    A fast tokenizer's backend is called directly (what transformers calls
    underneath, without building a BatchEncoding: a fifth of the time).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return encoding["input_ids"], encoding["offset_mapping"]
    if backend.truncation is not None or backend.padding is not None:  # left set by an earlier call elsewhere
        backend.no_truncation()
        backend.no_padding()
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encodings], [e.offsets for e in encodings]


def _inside(positions: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """positions[i] lies in some [a, b) of `spans` (sorted, disjoint)."""
    if not spans:
        return np.zeros(len(positions), dtype=bool)
    lo, hi = np.array(spans, dtype=np.int64).T
    k = np.searchsorted(lo, positions, side="right") - 1
    return (k >= 0) & (positions < hi[np.maximum(k, 0)])


# --------------------------------------------------------------------------- reading a source


def open_source(spec: DatasetSpec):
    """(label, Arrow-backed Dataset or, with `streaming`, IterableDataset, locate) like `sources.load_rows`.

    `locate(i)` names row i as `FILE:LINE` (JSON lines) or `FILE:row N`; the
    line numbers are read only when a bad row needs them.
    """
    import datasets

    path = local_path(spec)
    if path is None:
        label = hub_label(spec)
        return label, open_hub(spec), lambda i: f"{label}:row {i + 1}"
    if path.is_dir():  # a `save_to_disk` folder
        dataset = datasets.load_from_disk(str(path))
        return str(path), (dataset.to_iterable_dataset() if spec.streaming else dataset), \
            lambda i: f"{path}:row {i + 1}"
    builder = FORMATS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FORMATS)})")
    files = sorted(path.parent.glob(path.name)) if "*" in path.name else [path]
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                        streaming=spec.streaming)
    except Exception as err:  # datasets wraps parse errors into an opaque one; find the line ourselves
        raise DataError(_unreadable(files, err)) from None
    lines: list = []

    def locate(i: int) -> str:
        if builder == "json" and len(files) == 1 and not lines:
            lines.append(_json_lines(files[0]))
        numbers = lines[0] if lines else None
        return f"{path}:{numbers[i]}" if numbers is not None and i < len(numbers) else f"{path}:row {i + 1}"

    return str(path), dataset, locate


def bad_row_examples(store: TokenStore) -> list[str]:
    """The first few skip reasons of a store (as `SourceReport.examples`)."""
    return [text for _, text in store.problems[:EXAMPLES_KEPT]]
