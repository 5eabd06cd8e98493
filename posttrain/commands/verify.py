"""`posttrain verify`: score one prediction, or a JSONL file of them, with the registered verifiers.

    posttrain verify --verifier math --prediction 'so \\boxed{4}' --label 4
    posttrain verify --data rollouts.jsonl [--out scored.jsonl] [--prediction-field completion]

One item prints a JSON object {verifier, score, reason}. A file is scored in
reward worker processes: each row names its `verifier` (a name, a list, or
weights) and its reference in `ground_truth`; the other columns are context.
It prints the pass rate (score 1) and mean score per verifier, and writes
every row with `score` and `reason` added (default: FILE.scored.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HELP = "score a prediction or a JSONL file of predictions with the registered verifiers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    one = parser.add_argument_group("one item")
    one.add_argument("--verifier", help="verifier name (see the list printed on an unknown name)")
    one.add_argument("--prediction", help="the model output to score")
    one.add_argument("--label", help="reference as JSON (a bare string that is not JSON is taken as text)")
    many = parser.add_argument_group("a file")
    many.add_argument("--data", type=Path, help="JSONL rows with verifier, ground_truth and the prediction field")
    many.add_argument("--out", type=Path, help="where to write the scored rows (default: DATA.scored.jsonl)")
    many.add_argument("--prediction-field", default="completion", help="column holding the model output (default: completion)")
    many.add_argument("--label-field", default="ground_truth", help="column holding the reference (default: ground_truth)")
    many.add_argument("--workers", type=int, default=None, help="reward worker processes (default: CPU count; 0: in-process)")
    many.add_argument("--timeout", type=float, default=None, help="seconds per row before it scores 0 (default: 30)")
    parser.add_argument("--context", default=None, help="extra verifier context as a JSON object, e.g. '{\"pass_threshold\": 0.99}'")
    parser.add_argument("--module", action="append", default=[], metavar="MODULE", help="import MODULE to register its verifiers (repeatable)")


def run(args: argparse.Namespace) -> int:
    import rewards

    try:
        rewards.load_plugins(args.module)
        context = _json_object(args.context, "--context")
        if args.data is not None:
            return _score_file(args, context)
        if args.verifier is None or args.prediction is None:
            raise UsageError("give --verifier and --prediction (and --label), or --data FILE.jsonl")
        label = None if args.label is None else _json_or_text(args.label)
        result = rewards.evaluate(args.verifier, args.prediction, label, **context)
    except (UsageError, ImportError, rewards.UnknownNameError, ValueError) as err:
        print(f"posttrain verify: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"verifier": args.verifier, **result.to_dict()}))
    return 0


class UsageError(ValueError):
    pass


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _json_object(text: str | None, flag: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value


def read_rows(path: Path, prediction_field: str, label_field: str) -> list[dict]:
    """Rows of a JSONL file, checked: errors name the file, line and field."""
    import rewards

    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{where}: not JSON ({err})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{where}: a row must be a JSON object")
            for field in ("verifier", prediction_field):
                if field not in row:
                    raise UsageError(f"{where}: missing field {field!r}")
            try:
                rewards.parse_spec(row["verifier"])
            except (rewards.UnknownNameError, ValueError) as err:
                raise UsageError(f"{where}: field 'verifier': {err}") from None
            rows.append(row)
    return rows


def _score_file(args: argparse.Namespace, context: dict) -> int:
    import rewards

    if not args.data.is_file():
        raise UsageError(f"--data {args.data}: no such file")
    rows = read_rows(args.data, args.prediction_field, args.label_field)
    skip = {"verifier", args.prediction_field, args.label_field, "score", "reason"}
    items = [
        {**context, **{k: v for k, v in row.items() if k not in skip}, "verifier": row["verifier"],
         "prediction": row[args.prediction_field], "label": row.get(args.label_field)}
        for row in rows
    ]
    results = _score_with_progress(items, args.workers, args.timeout)
    out = args.out or args.data.with_name(args.data.name.removesuffix(".jsonl") + ".scored.jsonl")
    _write_rows(out, [{**row, "score": r.score, "reason": r.reason} for row, r in zip(rows, results)])
    _print_summary(rows, results)
    print(f"wrote {len(rows)} scored rows to {out}")
    return 0


def _score_with_progress(items: list[dict], workers: int | None, timeout: float | None, chunk: int = 256) -> list:
    import rewards
    from tqdm import tqdm

    results = []
    with tqdm(total=len(items), desc="scoring", unit="row", file=sys.stderr, disable=len(items) <= chunk) as bar:
        for start in range(0, len(items), chunk):
            results += rewards.score_batch(items[start : start + chunk], max_workers=workers, timeout=timeout)
            bar.update(min(chunk, len(items) - start))
    return results


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Write JSONL to a temporary name, then rename: no half-written file is ever left."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _print_summary(rows: list[dict], results: list) -> None:
    by_verifier: dict[str, list] = defaultdict(list)
    for row, result in zip(rows, results):
        key = row["verifier"] if isinstance(row["verifier"], str) else json.dumps(row["verifier"])
        by_verifier[key].append(result)
    print(f"{'verifier':<24} {'rows':>6} {'pass rate':>10} {'mean':>7} {'unscored':>9}")
    for key in sorted(by_verifier):
        scored = by_verifier[key]
        passed = sum(r.score == 1.0 for r in scored) / len(scored)
        mean = sum(r.score for r in scored) / len(scored)
        unscored = sum(not r.scored for r in scored)
        print(f"{key:<24} {len(scored):>6} {passed:>10.3f} {mean:>7.3f} {unscored:>9}")
