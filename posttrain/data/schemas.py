"""Row validators for the three dataset formats: SFT, DPO and RLVR rows.

A validator takes one row (a mapping) and returns None when the row is usable
or one line `field: problem` naming the first thing wrong with it, e.g.
`messages[2].role: unknown role 'bot'`. `posttrain.data.sources` prefixes the
file and row number, so a bad row fails as `FILE:ROW: field: problem`.

The formats are the conversational ones of the ecosystem (TRL, open-instruct):

- SFT:  `{"messages": [{"role": ..., "content": ...}, ...]}` with at least one
  assistant turn. Roles: system, user, assistant, environment (tool output, as
  in Olmo 3's Dolci-Instruct-SFT data) and tool. Tool use, as Dolci-Instruct
  rows carry it: `functions` (tool specs, JSON text) on a system or user turn,
  `function_calls` on an assistant turn, each a string or None; an assistant
  turn with function calls may have empty, None or no content
  (`posttrain.data.chat` renders them).
- DPO:  `{"chosen": [...], "rejected": [...]}`: two full conversations that
  share their prompt turns and differ in the final assistant turn
  (`dpo_row` checks the structure, `dpo_pair` the sharing and differing).
- RLVR: `{"messages": [...], "ground_truth": ..., "verifier": NAME}`: the
  prompt turns (ending in a user turn), the reference answer the verifier
  checks against, and the registered verifier's name (or several, weighted: see rewards.parse_spec).

Columns beyond these are allowed and passed through. Missing optional message
fields read as None (Arrow-backed files fill them in), so None is accepted
wherever a field is optional.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Optional

from posttrain.registry import Registry
from rewards.core import spec_parts

RowValidator = Callable[[dict], Optional[str]]

ROLES = ("system", "user", "assistant", "environment", "tool")
# optional text fields of a message: a string, or None when absent (Arrow fills absent fields with None)
TEXT_FIELDS = ("functions", "function_calls")


def _conversation_problem(messages: Any, field: str) -> Optional[str]:
    """The first problem of a message list, as `field[i].key: problem`, or None."""
    if messages is None:
        return f"{field}: missing"
    if not isinstance(messages, (list, tuple)):
        return f"{field}: expected a list of messages, got {type(messages).__name__}"
    if not messages:
        return f"{field}: empty conversation"
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            return f"{where}: expected a message mapping, got {type(message).__name__}"
        role = message.get("role")
        if role is None:
            return f"{where}.role: missing"
        if role not in ROLES:
            return f"{where}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        for key in TEXT_FIELDS:
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                return f"{where}.{key}: expected text, got {type(value).__name__}"
        if message.get("functions") and role not in ("system", "user"):  # an empty misplaced field is ignored
            return f"{where}.functions: only system and user turns carry functions, not {role!r}"
        calls = message.get("function_calls")
        if calls and role != "assistant":
            return f"{where}.function_calls: only assistant turns carry function calls, not {role!r}"
        content = message.get("content")
        if not isinstance(content, str) and not (content is None and calls is not None):
            got = "missing" if content is None else f"expected text, got {type(content).__name__}"
            return f"{where}.content: {got}"
    return None


def sft_row(row: dict) -> Optional[str]:
    """An SFT conversation: valid messages, at least one assistant turn to learn from."""
    messages = row.get("messages")
    problem = _conversation_problem(messages, "messages")
    if problem:
        return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "messages: no assistant turn to train on"
    return None


def dpo_row(row: dict) -> Optional[str]:
    """A preference pair's structure: two valid conversations, each ending in an assistant turn.

    Whether the two sides make a usable pair is `dpo_pair`'s question (the DPO
    stage applies it under its own `dpo.on_bad_pair` policy).
    """
    for side in ("chosen", "rejected"):
        problem = _conversation_problem(row.get(side), side)
        if problem:
            return problem
        last = row[side][-1]["role"]
        if last != "assistant":
            return f"{side}[{len(row[side]) - 1}].role: the last turn must be the assistant's, got {last!r}"
    return None


def dpo_pair(row: dict) -> Optional[str]:
    """A structurally valid pair (see `dpo_row`) that teaches something: same prompt turns, different answers."""
    chosen, rejected = row["chosen"], row["rejected"]
    if _turns(chosen[:-1]) != _turns(rejected[:-1]):
        return "rejected: prompt turns differ from chosen's (both sides must share everything before the last turn)"
    if chosen[-1]["content"] == rejected[-1]["content"]:
        return "rejected: the final answer is identical to chosen's"
    return None


def all_of(*validators: RowValidator) -> RowValidator:
    """A validator reporting the first problem any of `validators` finds, in order."""

    def check(row: dict) -> Optional[str]:
        for validator in validators:
            problem = validator(row)
            if problem:
                return problem
        return None

    return check


def _turns(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def rlvr_row_validator(verifiers: Collection[str] | None = None) -> RowValidator:
    """An RLVR row validator; with `verifiers` given, the row's verifier must be one of them."""

    def rlvr_row(row: dict) -> Optional[str]:
        messages = row.get("messages")
        problem = _conversation_problem(messages, "messages")
        if problem:
            return problem
        if messages[-1]["role"] != "user":
            return f"messages[{len(messages) - 1}].role: the prompt must end with a user turn, got {messages[-1]['role']!r}"
        if row.get("ground_truth") is None:
            return "ground_truth: missing"
        try:
            names = [name for name, _ in spec_parts(row.get("verifier"))]
        except (ValueError, TypeError) as err:
            return f"verifier: {err}"
        unknown = [n for n in names if verifiers is not None and n not in verifiers]
        if unknown:
            return f"verifier: unknown verifier {unknown[0]!r} (registered: {', '.join(sorted(verifiers))})"
        return None

    return rlvr_row


rlvr_row = rlvr_row_validator()

# stage name -> the validator of its rows
ROW_SCHEMAS: Registry[RowValidator] = Registry("row schema")
ROW_SCHEMAS.register("sft", sft_row)
ROW_SCHEMAS.register("dpo", dpo_row)
ROW_SCHEMAS.register("rlvr", rlvr_row)
