"""Every recipe key is read by something that runs: no key validates and then does nothing.

The walk covers every field of every stage schema in `STAGE_SCHEMAS`, nested sections and list items
(`data.train.path`) included. A key counts as read when some module of `posttrain/` or `rewards/` other
than the schema (`posttrain/config.py`) and the planner (`posttrain/plan.py`, `memory.py` and its command) reads an
attribute of that name: `x.name` or `getattr(x, "name")`, found in the parsed source, so comments and
docstrings do not count. A key only the planner reads would describe a run that no stage carries out.

What this cannot see: a name read for another object (`.seed`, `.path` are common), and a key that some
stages read but a stage whose schema also has it ignores. Keep stage-specific keys in that stage's
sections (as `data.max_length` lives in SFT's and DPO's `DataSection`, not in RLVR's).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest
from pydantic import BaseModel

from posttrain.config import STAGE_SCHEMAS, Section, _model_in

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("posttrain", "rewards")
# The schema declares the keys and the planner only estimates: neither reading a key makes it do anything.
NOT_READERS = frozenset({"posttrain/config.py", "posttrain/plan.py", "posttrain/memory.py", "posttrain/commands/plan.py"})
# Keys read without naming them as attributes, each with the reason. None today: `stage` picks the schema
# but is also read as `config.stage`; resolved recipes are written out whole (`to_dict`, `config_hash`),
# which shows a key but does not make it do anything, so that alone never counts.
ALLOWED: dict[str, str] = {}


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, field name) of every field of `model`, recursing into nested sections and list items."""
    for name, field in model.model_fields.items():
        yield prefix + name, name
        nested = _model_in(field.annotation)
        if nested is not None:
            yield from schema_keys(nested, f"{prefix}{name}.")


def attributes_read(root: Path, skip: frozenset[str] = NOT_READERS) -> set[str]:
    """Attribute names read (`x.name`, `getattr(x, "name")`) in the .py files under root/SOURCES, less `skip`."""
    names: set[str] = set()
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root).as_posix() in skip:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                      and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                    names.add(node.args[1].value)
    return names


def unread_keys(schemas: dict[str, type[BaseModel]], read: set[str], allowed: dict[str, str]) -> list[str]:
    """`stage: key` for every schema key whose name nothing in `read` reads and `allowed` does not excuse."""
    return sorted({f"{stage}: {dotted}" for stage, schema in schemas.items()
                   for dotted, name in schema_keys(schema) if name not in read and dotted not in allowed})


SCHEMAS = {name: STAGE_SCHEMAS.get(name) for name in STAGE_SCHEMAS.names()}


@pytest.fixture(scope="module")
def read() -> set[str]:
    return attributes_read(REPO)


def test_every_recipe_key_is_read_outside_the_schema_and_the_planner(read):
    unread = unread_keys(SCHEMAS, read, ALLOWED)
    assert not unread, ("recipe keys that no stage reads (remove them, or make a stage use them): "
                        + ", ".join(unread))


def test_allowed_keys_are_schema_keys_that_need_allowing(read):
    every = {dotted: name for schema in SCHEMAS.values() for dotted, name in schema_keys(schema)}
    for dotted, reason in ALLOWED.items():
        assert dotted in every, f"ALLOWED names {dotted!r}, which no stage schema has"
        assert every[dotted] not in read, f"ALLOWED names {dotted!r}, which is read as .{every[dotted]}: drop it"
        assert reason.strip(), f"ALLOWED gives no reason for {dotted!r}"


def test_the_walk_reaches_nested_sections_and_list_items():
    keys = {dotted for schema in SCHEMAS.values() for dotted, _ in schema_keys(schema)}
    assert {"optim.lr", "data.train.path", "data.train.columns", "grpo.eps_high", "rollout.max_restarts"} <= keys
    assert "data.max_length" in dict(schema_keys(SCHEMAS["sft"])) and "data.max_length" not in dict(schema_keys(SCHEMAS["rlvr"]))


# --------------------------------------------------------------------------
# The check can fail


class _Made(Section):
    used: int = 0
    never_read_by_any_stage: int = 0


class _MadeStage(Section):
    made: _Made = _Made()
    items: list[_Made] = []


def test_a_made_up_key_that_nothing_reads_is_flagged(read):
    """A section whose `never_read_by_any_stage` no module reads, nested and as list items, is flagged twice."""
    assert unread_keys({"made": _MadeStage}, read | {"used", "made", "items"}, {}) == [
        "made: items.never_read_by_any_stage",
        "made: made.never_read_by_any_stage",
    ]
    assert unread_keys({"made": _MadeStage}, read | {"used", "made", "items"},
                       {"made.never_read_by_any_stage": "x", "items.never_read_by_any_stage": "x"}) == []


def test_a_key_read_only_by_the_planner_or_in_text_is_not_read(tmp_path):
    (tmp_path / "posttrain" / "stages").mkdir(parents=True)
    (tmp_path / "rewards").mkdir()
    (tmp_path / "posttrain" / "plan.py").write_text("def f(config):\n    return config.grpo.only_the_planner\n")
    (tmp_path / "posttrain" / "stages" / "s.py").write_text(
        '"""Uses `grpo.in_a_docstring`."""\n# grpo.in_a_comment\n'
        'def g(config):\n    return config.grpo.in_a_stage, getattr(config, "by_getattr"), "grpo.in_a_string"\n')
    (tmp_path / "rewards" / "r.py").write_text("def h(x):\n    return x.in_rewards\n")
    read = attributes_read(tmp_path)
    assert {"grpo", "in_a_stage", "by_getattr", "in_rewards"} <= read
    assert not {"only_the_planner", "in_a_docstring", "in_a_comment", "in_a_string"} & read
