"""What `posttrain eval` writes into its output directory OUT.

- `OUT/results.json`: the run (checkpoint, its content hash, the stage it is
  compared as, suite, engines) and per task: items `n`, `samples` per item,
  every metric as {"value", "stderr", "n"}, the `primary` metric, `unscored`
  responses (verifier crashed, timed out or could not score), prompts
  truncated to fit the context, items generated in this run (0: all cached),
  wall time, the task spec's hash and the cache file; plus the released Olmo 3
  number of the suite's variant at that stage (`released`) and its source.
  Tasks evaluated earlier on the same checkpoint are kept (a `--tasks b` run
  adds to a `--tasks a` run); another checkpoint's results are replaced.
- `OUT/<suite>.md` (`OUT/tasks.md` without a suite): one Markdown table, task
  x metric with value ± stderr and the released number beside the primary
  metric, the source line under it (`suite_table`, which the run report and the
  model card use too, from results.json alone).
- `OUT/<task>.jsonl`: every response with its prompt, score, reason, length and
  finish reason, for error analysis.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from posttrain.checkpoints import read_json, write_json_atomic

RESULTS = "results.json"
EVAL_DIR = "eval"  # RUN_DIR/<stage>/eval/<suite>/: a suite on the stage's checkpoint (`posttrain pipeline --eval-suite`)
STAGE_TITLES = {"sft": "SFT", "dpo": "DPO", "final": "final"}


def write_all(out: Path, run: dict, records: dict[str, dict], suite) -> dict:
    """results.json (merged with earlier tasks of the same checkpoint) and the suite's Markdown; returns the content."""
    released, source = _released(suite, run.get("stage"))
    for name, record in records.items():
        record["released"] = released.get(name)
    path = out / RESULTS
    old = read_json(path) if path.is_file() else {}
    tasks = dict(old.get("tasks") or {}) if old.get("checkpoint_hash") == run["checkpoint_hash"] else {}
    tasks.update(records)
    order = list(suite.tasks) if suite is not None else []
    tasks = {k: tasks[k] for k in sorted(tasks, key=lambda k: (order.index(k) if k in order else len(order), k))}
    content = {**run, "released_source": source, "tasks": tasks}
    write_json_atomic(path, content)
    (out / markdown_name(content)).write_text(markdown(content) + "\n")
    return content


def _released(suite, stage: str | None) -> tuple[dict[str, dict], str | None]:
    """{task: {"value", "stage"}} of the released Olmo 3 model at `stage` (final when unknown), and the source."""
    if suite is None:
        return {}, None
    from posttrain.eval.tasks import released_numbers

    numbers, source = released_numbers(suite.name)
    column = stage or "final"
    return ({task: {"value": values[column], "stage": column} for task, values in numbers.items()
             if values.get(column) is not None}, source)


def markdown_name(content: Mapping) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', content.get('suite') or 'tasks')}.md"


def write_samples(out: Path, task: str, lines: Sequence[dict]) -> Path:
    """OUT/<task>.jsonl, written whole then renamed (a reader never sees half of it)."""
    path = out / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}.jsonl"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        for line in lines:
            handle.write(json.dumps(line, default=str) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------
# Tables


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def percent(value: Any) -> str:
    """A rate in [0, 1] as a percentage with one decimal, as the released tables print them."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}"


def cell(metric: Mapping) -> str:
    """`value ± stderr` of one metric entry, in percent."""
    stderr = metric.get("stderr")
    shown = percent(metric.get("value"))
    return shown if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)) else f"{shown} ± {percent(stderr)}"


def suite_table(content: Mapping) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, note) of results.json's content: task, n, metric, value ± stderr, and with a suite the
    released number of its variant at the checkpoint's stage beside the primary metric."""
    stage, suite = content.get("stage"), content.get("suite")
    header = ["task", "n", "metric", "value ± stderr (%)"]
    if suite:
        header.append(f"Olmo 3 {(content.get('variant') or '').capitalize()} {STAGE_TITLES[stage or 'final']} "
                      "(released) (%)")
    rows = []
    for name, task in (content.get("tasks") or {}).items():
        released = (task.get("released") or {}).get("value")
        for metric, entry in (task.get("metrics") or {}).items():
            row = [name, str(task.get("n", "-")), metric, cell(entry)]
            if suite:
                row.append(number(released, 1) if metric == task.get("primary") and released is not None else "")
            rows.append(row)
    notes = [f"Checkpoint `{content.get('checkpoint')}` (hash {content.get('checkpoint_hash')})"]
    if content.get("released_source"):
        notes.append(f"released numbers: {content['released_source']}")
    if suite and not stage:
        notes.append("the checkpoint's stage is unknown (no manifest stage; `--stage` chooses): compared with final")
    return header, rows, "; ".join(notes) + "."


def markdown(content: Mapping) -> str:
    header, rows, note = suite_table(content)
    title = content.get("suite") or "tasks"
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines + ["", note])


def headline(record: Mapping) -> str:
    """One line per task for the terminal: its primary metric, n, unscored, time."""
    primary = (record.get("metrics") or {}).get(record.get("primary")) or {}
    return (f"{record.get('primary')} {cell(primary)} on {record.get('n')} items x {record.get('samples')} "
            f"({record.get('unscored', 0)} unscored, {record.get('generated', 0)} generated, "
            f"{record.get('wall_s', 0):.0f}s)")


def find_results(eval_dir: str | Path, checkpoint_hash: str | None = None) -> list[dict]:
    """Every EVAL_DIR/<suite>/results.json (a stage's eval/ directory), optionally only of one checkpoint."""
    found = []
    root = Path(eval_dir)
    if not root.is_dir():
        return found
    for path in sorted(root.glob(f"*/{RESULTS}")):
        content = read_json(path)
        if checkpoint_hash is None or content.get("checkpoint_hash") == checkpoint_hash:
            found.append(content)
    return found
