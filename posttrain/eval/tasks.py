"""Benchmark tasks as declarative files: what to ask, what the answer is checked against, how to sample.

A task is a YAML file (`posttrain/eval/tasks/NAME.yaml` for the built-ins)
validated into a `TaskSpec`: the dataset it reads, a `str.format` template
that turns a row into the user turn, the label handed to a `rewards`
verifier (a column, or a template, optionally through a registered parser in
`posttrain.eval.task_data.LABEL_PARSERS`), the sampling settings and the
metrics (`posttrain.eval.metrics`). Templates are `str.format` templates over
the row's columns (and the names `fields` adds), so literal braces are
doubled: `\\\\boxed{{Your answer}}`.

Where a task comes from (`get_task`), in this order:

1. a path to a YAML file (`my_tasks/arc.yaml`);
2. a built-in name (`gsm8k`, `ifeval`, ... : `task_names()`);
3. an installed package's entry point in the group `posttrain.eval_tasks`:
   its value is a YAML path (absolute, or `package:relative/path.yaml`
   inside an installed package) or a module attribute
   (`mypkg.tasks:ARC`) holding a `TaskSpec` or a dict of its fields.

So a new benchmark needs a YAML file, not a fork. Suites
(`posttrain/eval/suites/NAME.yaml`) name a variant and a list of tasks;
`released.yaml` holds the numbers AllenAI published for Olmo 3 7B, to
compare against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, model_validator

from posttrain.config import Section
from posttrain.registry import UnknownNameError

HERE = Path(__file__).resolve().parent
TASK_DIR = HERE / "tasks"
SUITE_DIR = HERE / "suites"
RELEASED_FILE = HERE / "released.yaml"
ENTRY_POINT_GROUP = "posttrain.eval_tasks"
METRIC_RE = re.compile(r"^(pass|maj)@([1-9][0-9]*)$")
VARIANTS = ("think", "instruct")


class Sampling(Section):
    """How responses are drawn; the defaults are Olmo 3's evaluation setting (temperature 0.6, top-p 0.95, 32768 tokens)."""

    temperature: float = Field(0.6, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(32768, ge=1, description="most tokens generated per response")
    n: int = Field(1, ge=1, description="samples per prompt (pass@K and maj@K need K <= n)")


class DatasetRef(Section):
    path: str = Field(description="hub dataset id, or a local .jsonl/.json/.parquet file or a directory of split files")
    name: Optional[str] = Field(None, description="hub configuration name")
    split: str = Field("test", description="split to read")
    revision: Optional[str] = Field(None, description="hub commit to read; null: not pinned (the newest)")
    loader: str = Field("hub", description="registered loader (posttrain.eval.task_data.LOADERS): hub, human_eval")


class TaskSpec(Section):
    """One benchmark: data, prompt, label, verifier, sampling, metrics."""

    name: str = Field(description="the task's name in results")
    description: str = Field("", description="what it measures, and where this version departs from the reference")
    dataset: DatasetRef
    fields: dict[str, str] = Field(default_factory=dict, description="template variable -> source column")
    system: Optional[str] = Field(None, description="system turn, if the evaluation uses one")
    prompt: str = Field(description="str.format template over the row (after `fields`): the user turn")
    label: str = Field(description="a column name, or a str.format template over the row: the verifier's reference")
    label_parser: Optional[str] = Field(None, description="registered parser (task_data.LABEL_PARSERS) the label goes through")
    verifier: Any = Field(description="rewards verifier spec: a name, a list, {name: weight}")
    verifier_options: dict = Field(default_factory=dict, description="verifier name -> options (rewards.score_batch `options`)")
    sampling: Sampling = Field(default_factory=Sampling)
    metrics: list[str] = Field(default_factory=lambda: ["pass@1"], description="pass@K (unbiased), maj@K (majority vote)")
    primary: str = Field("pass@1", description="the metric a suite's table shows")

    @model_validator(mode="after")
    def _consistent(self):
        for metric in self.metrics:
            match = METRIC_RE.match(metric)
            if match is None:
                raise ValueError(f"metrics: {metric!r} is not pass@K or maj@K")
            if int(match.group(2)) > self.sampling.n:
                raise ValueError(f"metrics: {metric} needs at least {match.group(2)} samples per prompt; sampling.n is {self.sampling.n}")
        if self.primary not in self.metrics:
            raise ValueError(f"primary: {self.primary!r} is not one of metrics {self.metrics}")
        bad = [name for name, options in self.verifier_options.items() if not isinstance(options, dict)]
        if bad:
            raise ValueError(f"verifier_options: expected verifier name -> mapping of options; {bad} are not mappings")
        from posttrain.eval.task_data import LABEL_PARSERS, LOADERS  # lazily: task_data imports this module

        try:
            LOADERS.get(self.dataset.loader)
            if self.label_parser is not None:
                LABEL_PARSERS.get(self.label_parser)
        except UnknownNameError as err:
            raise ValueError(str(err)) from None
        return self


# --------------------------------------------------------------------------
# Finding tasks


def task_names() -> list[str]:
    """Built-in task names (the YAML files under posttrain/eval/tasks/)."""
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def get_task(name_or_path: str) -> TaskSpec:
    """A task from a YAML path, a built-in name, or a `posttrain.eval_tasks` entry point (module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"task file {name_or_path}: no such file")
        return task_from_file(path)
    builtin = TASK_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return task_from_file(builtin)
    points = {point.name: point for point in _entry_points()}
    if name_or_path in points:
        return task_from_entry_point(points[name_or_path])
    valid = sorted(set(task_names()) | set(points))
    raise UnknownNameError(f"unknown task {name_or_path!r}: not a YAML file, a built-in or a {ENTRY_POINT_GROUP!r} "
                           f"entry point. Valid: {', '.join(valid)}")


def task_from_file(path: Path) -> TaskSpec:
    """A task YAML file; its `name` defaults to the file's stem."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a task file is a mapping of TaskSpec fields")
    return _spec({"name": Path(path).stem, **data}, str(path))


def task_from_entry_point(point: Any) -> TaskSpec:
    """What one `posttrain.eval_tasks` entry point names: a YAML path, or a TaskSpec / dict attribute."""
    value = point.value.strip()
    where = f"entry point {point.name!r} = {value!r} ({ENTRY_POINT_GROUP})"
    if value.endswith((".yaml", ".yml")):
        package, sep, relative = value.partition(":")
        path = Path(resources.files(package) / relative) if sep and not Path(value).is_absolute() else Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no such file {path}")
        return task_from_file(path)
    try:
        obj = point.load()
    except Exception as err:  # a broken plugin must say which one it is
        raise ImportError(f"{where} failed to load: {err}") from err
    if isinstance(obj, TaskSpec):
        return obj
    if isinstance(obj, dict):
        return _spec({"name": point.name, **obj}, where)
    raise TypeError(f"{where}: expected a TaskSpec, a dict of its fields or a YAML path, got {type(obj).__name__}")


def _spec(data: dict, where: str) -> TaskSpec:
    try:
        return TaskSpec.model_validate(data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _entry_points() -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


# --------------------------------------------------------------------------
# Suites and released numbers


@dataclass
class Suite:
    name: str
    variant: str  # "think" | "instruct": the chat shape responses are checked and scored in
    tasks: list[str]


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def get_suite(name: str) -> Suite:
    """A suite file `posttrain/eval/suites/NAME.yaml`: variant and task names (each checked to load)."""
    path = SUITE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UnknownNameError(f"unknown suite {name!r}. Valid: {', '.join(suite_names())}")
    data = yaml.safe_load(path.read_text())
    if data.get("variant") not in VARIANTS:
        raise ValueError(f"{path}: variant must be one of {VARIANTS}, got {data.get('variant')!r}")
    suite = Suite(name=data.get("name", name), variant=data["variant"], tasks=list(data["tasks"]))
    for task in suite.tasks:
        get_task(task)
    return suite


def released_numbers(suite: str) -> tuple[dict[str, dict[str, float]], str]:
    """({task: {"sft": .., "dpo": .., "final": ..}}, source) for a suite, from released.yaml.

    Values are percentages as published (95.1 means 95.1%); a stage the
    source does not give is absent. Tasks without a released number are absent.
    """
    data = yaml.safe_load(RELEASED_FILE.read_text())
    suites = data["suites"]
    if suite not in suites:
        raise UnknownNameError(f"no released numbers for suite {suite!r}. Valid: {', '.join(sorted(suites))}")
    entry = suites[suite]
    numbers = {task: {stage: float(v) for stage, v in stages.items()} for task, stages in entry["tasks"].items()}
    return numbers, entry["source"]
