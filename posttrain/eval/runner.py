"""`evaluate`: benchmark tasks on one checkpoint, from task specs to OUT/results.json.

For each task (a suite's, filtered by `tasks`, or `tasks` named directly):

1. the spec (`posttrain.eval.tasks.get_task`), with the overrides applied:
   `key=value` (dotted into the spec: `sampling.n=4`, `sampling.max_tokens=64`,
   `verifier_options.endpoint=http://...`) to every task, `TASK:key=value` to one;
   `rollout.key=value` sets the engines' `RolloutSection` instead
   (`rollout.kv_cache_gib=2`, `rollout.hf_batch_size=16`). Values are YAML
   (`4` is an int, `[a, b]` a list). A key the spec does not have fails with
   the closest one;
2. its items (`task_data.load_items`, the first `limit`; `paths[TASK]` reads
   them from a local file instead of the spec's dataset);
3. `sampling.n` responses per item (`posttrain.eval.generation`: engines, the
   response cache under OUT/cache/);
4. scores: `rewards.score_batch` with the task's verifier and
   `verifier_options` (code runs in the project's sandbox, in worker
   processes), each a fraction of the row's full score
   (`rewards.core.full_score`), then the task's metrics (`metrics.task_metrics`);
5. OUT/<task>.jsonl (every prompt, response, score and reason), and at the end
   OUT/results.json and OUT/<suite>.md (`posttrain.eval.results`).

Engines are shared by all tasks of a call and start only when a task has
something to generate.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from posttrain.checkpoints import MANIFEST, checkpoint_hash, read_json
from posttrain.eval import results as R
from posttrain.eval.generation import Engines, ResponseCache, build_requests, digest, generate_task, model_context

# A checkpoint's manifest stage -> the column of the released Olmo 3 tables it is compared with.
STAGE_COLUMNS = {"sft": "sft", "dpo": "dpo", "rlvr": "final", "final": "final"}
ROLLOUT_PREFIX = "rollout."


class EvalError(ValueError):
    """The evaluation cannot run as asked (unknown task or suite, bad override); the message says what is valid."""


def evaluate(
    checkpoint: str | Path,
    suite: str | None = None,
    tasks: Sequence[str] = (),
    limit: int | None = None,
    output: str | Path = "eval",
    overrides: Mapping[str, Any] | Sequence[str] = (),
    engine: str = "vllm",
    engines: int = 1,
    paths: Mapping[str, str] | None = None,
    stage: str | None = None,
    seed: int = 0,
) -> dict:
    """Evaluate `checkpoint` on a suite or on named tasks (module docstring); returns results.json's content.

    engines: 0 runs one engine in this process (no Ray); K >= 1 runs K engine actors on Ray.
    stage: the released column to compare with (sft, dpo, final); default from the checkpoint's manifest.
    """
    from transformers import AutoTokenizer

    from posttrain.eval.task_data import load_items

    checkpoint, out, paths = Path(checkpoint), Path(output), dict(paths or {})
    if engines < 0:
        raise EvalError(f"engines must be >= 0 (0: one engine in this process, no Ray), got {engines}")
    chosen, specs = resolve_tasks(suite, tasks)
    per_task, rollout = split_overrides(overrides, [s.name for s in specs])
    specs = [apply_overrides(spec, per_task.get(spec.name, [])) for spec in specs]
    stage = released_stage(checkpoint, stage)
    digest_of_checkpoint = checkpoint_hash(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    context = model_context(checkpoint)
    pool = Engines(checkpoint, engine, engines, rollout, seed)
    check_engines(pool, context)
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    try:
        for spec in specs:
            began = time.time()
            items = load_items(spec, limit=limit, path=paths.get(spec.name))
            requests = build_requests(items, tokenizer, context, spec.sampling.max_tokens)
            cache = ResponseCache(out / "cache", digest_of_checkpoint, spec)
            samples, generated = generate_task(spec.name, requests, spec.sampling, cache, pool, context)
            record = score_task(spec, items, requests, samples, out)
            record.update(generated=generated, truncated_prompts=sum(r.truncated for r in requests),
                          wall_s=round(time.time() - began, 2), task_hash=task_hash(spec), cache=str(cache.path))
            records[spec.name] = record
            print(f"[eval {spec.name}] " + R.headline(record), flush=True)
    finally:
        pool.close()
    run = {"checkpoint": str(checkpoint), "checkpoint_hash": digest_of_checkpoint, "stage": stage,
           "suite": chosen.name if chosen else None, "variant": chosen.variant if chosen else None,
           "engine": engine, "engines": engines, "limit": limit, "engine_calls": pool.calls,
           "served": dict(pool.served)}
    return R.write_all(out, run, records, chosen)


def check_engines(pool: Engines, context: int) -> None:
    """Fail now, not when the first task needs its engines, on an unknown engine or a bad `rollout.` override."""
    from posttrain.rollout import ENGINES

    try:
        ENGINES.get(pool.engine)
        pool.options(context)
    except (KeyError, ValueError) as err:
        raise EvalError(f"engines: {err}") from None


def score_task(spec, items: Sequence[Any], requests: Sequence[Any], samples: Mapping[str, list], out: Path) -> dict:
    """Score every sample, write OUT/<task>.jsonl, and compute the task's metrics."""
    import rewards
    from rewards.core import full_score

    from posttrain.data.chat import split_think
    from posttrain.eval.metrics import task_metrics

    rows = [(item, request, sample) for item, request in zip(items, requests) for sample in samples[request.id]]
    batch = [{"verifier": item.verifier, "prediction": sample.text, "label": item.label} for item, _, sample in rows]
    results = rewards.score_batch(batch, options=spec.verifier_options or None) if batch else []
    scores = [float(r.score) / full_score(item.verifier) for (item, _, _), r in zip(rows, results)]
    n = spec.sampling.n
    per_item = [scores[i * n:(i + 1) * n] for i in range(len(items))]
    answers = None
    if any(m.startswith("maj@") for m in spec.metrics):  # majority vote over the extracted final answers
        from rewards.math import extract_answer

        texts = [split_think(sample.text)[1] for _, _, sample in rows]
        flat = [(extract_answer(t) or "").strip() for t in texts]
        answers = [flat[i * n:(i + 1) * n] for i in range(len(items))]
    lines = [{"id": request.id, "sample": sample.sample, "prompt": request.prompt, "response": sample.text,
              "score": score, "scored": bool(result.scored), "reason": result.reason, "tokens": sample.tokens,
              "finish_reason": sample.finish_reason, "label": item.label}
             for (item, request, sample), score, result in zip(rows, scores, results)]
    R.write_samples(out, spec.name, lines)
    return {"n": len(items), "samples": n, "primary": spec.primary,
            "metrics": task_metrics(per_item, spec.metrics, answers),
            "unscored": sum(not r.scored for r in results)}


# --------------------------------------------------------------------------
# Tasks and overrides


def resolve_tasks(suite: str | None, tasks: Sequence[str]) -> tuple[Any, list]:
    """(the suite or None, the task specs): a suite's tasks, filtered by `tasks` when given, or `tasks` by name."""
    from posttrain.eval.tasks import get_suite, get_task

    tasks = [t for t in tasks if t]
    if suite is None and not tasks:
        raise EvalError("name a suite (--suite) or tasks (--tasks a,b)")
    chosen = None
    if suite is not None:
        try:
            chosen = get_suite(suite)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise EvalError(str(err)) from None
        unknown = [t for t in tasks if t not in chosen.tasks]
        if unknown:
            raise EvalError(f"task(s) {', '.join(unknown)} not in suite {chosen.name!r}; its tasks: "
                            + ", ".join(chosen.tasks))
    names = [t for t in chosen.tasks if not tasks or t in tasks] if chosen else tasks
    specs = []
    for name in names:
        try:
            specs.append(get_task(name))
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise EvalError(str(err)) from None
    return chosen, specs


def parse_value(text: Any) -> Any:
    return yaml.safe_load(text) if isinstance(text, str) else text


def split_overrides(overrides: Mapping[str, Any] | Sequence[str], names: Sequence[str]
                    ) -> tuple[dict[str, list[tuple[str, Any]]], dict[str, Any]]:
    """({task: [(dotted key, value)]}, engine options) from `key=value`, `TASK:key=value` and `rollout.key=value`."""
    if isinstance(overrides, Mapping):
        pairs = [(str(k), parse_value(v)) for k, v in overrides.items()]
    else:
        pairs = []
        for item in overrides:
            if "=" not in item:
                raise EvalError(f"override {item!r}: expected key=value (or TASK:key=value)")
            key, value = item.split("=", 1)
            pairs.append((key.strip(), parse_value(value)))
    per_task: dict[str, list[tuple[str, Any]]] = {name: [] for name in names}
    rollout: dict[str, Any] = {}
    for key, value in pairs:
        if key.startswith(ROLLOUT_PREFIX):
            rollout[key[len(ROLLOUT_PREFIX):]] = value
        elif ":" in key:
            task, rest = key.split(":", 1)
            if task not in per_task:
                raise EvalError(f"override {key!r}: {task!r} is not a task of this run ({', '.join(names)})")
            per_task[task].append((rest, value))
        else:
            for name in names:
                per_task[name].append((key, value))
    return per_task, rollout


def apply_overrides(spec, pairs: Sequence[tuple[str, Any]]):
    """A copy of the task spec with each dotted key set; a key the spec cannot hold raises `EvalError`.

    Keys of the spec's models must exist (`sampling.n`); inside a free mapping (`verifier_options`) new keys
    are created (`verifier_options.llm_judge.endpoint=http://...`).
    """
    if not pairs:
        return spec
    data = spec.model_dump()
    for key, value in pairs:
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts):
            fixed = _is_model(spec, parts[:depth])
            if part not in node and fixed:
                raise EvalError(_unknown_key(key, ".".join(parts[:depth + 1]), node))
            if depth == len(parts) - 1:
                node[part] = value
            elif isinstance(node.setdefault(part, {}), dict):
                node = node[part]
            else:
                raise EvalError(f"override {key!r}: {'.'.join(parts[:depth + 1])} is a value, not a mapping")
    try:
        return type(spec).model_validate(data)
    except ValueError as err:  # pydantic's ValidationError names the field and what it expects
        raise EvalError(f"task {spec.name!r}: overrides {', '.join(k for k, _ in pairs)}: {err}") from None


def _is_model(spec, path: Sequence[str]) -> bool:
    """True when the container at `path` is one of the spec's models (fixed keys), not a free mapping."""
    from pydantic import BaseModel

    node: Any = spec
    for part in path:
        node = getattr(node, part, None) if isinstance(node, BaseModel) else None
    return isinstance(node, BaseModel)


def _unknown_key(key: str, where: str, node: Mapping) -> str:
    last = where.split(".")[-1]
    close = difflib.get_close_matches(last, list(node), n=1)
    hint = f"; did you mean {'.'.join(where.split('.')[:-1] + [close[0]])!r}?" if close else ""
    return f"override {key!r}: task specs have no {where!r}{hint} (keys here: {', '.join(node)})"


def task_hash(spec) -> str:
    """Hash of the whole (overridden) task spec, recorded in results.json."""
    return digest(spec.model_dump(mode="json"))


def released_stage(checkpoint: Path, stage: str | None) -> str | None:
    """The released column to compare with: `stage` when given, else the manifest's stage (rlvr -> final)."""
    if stage is not None:
        if stage not in STAGE_COLUMNS:
            raise EvalError(f"stage {stage!r}: expected one of sft, dpo, final")
        return STAGE_COLUMNS[stage]
    path = checkpoint / MANIFEST
    recorded = read_json(path).get("stage") if path.is_file() else None
    return STAGE_COLUMNS.get(recorded) if recorded else None


def parse_paths(items: Sequence[str]) -> dict[str, str]:
    """`TASK=PATH` pairs (`--data`) as a dict."""
    out = {}
    for item in items:
        if "=" not in item:
            raise EvalError(f"--data {item!r}: expected TASK=PATH")
        task, path = item.split("=", 1)
        out[task] = path
    return out
