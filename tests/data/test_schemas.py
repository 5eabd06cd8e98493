"""Row validators: each names the field and the problem of the first thing wrong with a row."""

from __future__ import annotations

import pytest

from posttrain.data.schemas import ROW_SCHEMAS, all_of, dpo_pair, dpo_row, rlvr_row, rlvr_row_validator, sft_row


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


PROMPT = [turn("system", "Be brief."), turn("user", "What is 2+3?")]
SFT = {"messages": [*PROMPT, turn("assistant", "<think>2+3=5</think>\\boxed{5}")]}
DPO = {"chosen": [*PROMPT, turn("assistant", "\\boxed{5}")], "rejected": [*PROMPT, turn("assistant", "\\boxed{6}")]}
RLVR = {"messages": PROMPT, "ground_truth": "5", "verifier": "math"}


def test_valid_rows_pass():
    assert sft_row(SFT) is None
    assert dpo_row(DPO) is None and dpo_pair(DPO) is None
    assert rlvr_row(RLVR) is None
    assert rlvr_row({**RLVR, "ground_truth": ["5", "five"], "verifier": ["math"]}) is None


def test_registry_maps_stages_to_validators():
    assert ROW_SCHEMAS.get("sft") is sft_row and ROW_SCHEMAS.get("dpo") is dpo_row and ROW_SCHEMAS.get("rlvr") is rlvr_row


def test_optional_message_fields_filled_with_none_are_fine():
    """Arrow-backed files give every message every key seen in the file, None where absent."""
    row = {"messages": [{**m, "name": None, "tool_calls": None} for m in SFT["messages"]]}
    assert sft_row(row) is None


@pytest.mark.parametrize(
    "row, problem",
    [
        ({}, "messages: missing"),
        ({"messages": "hi"}, "messages: expected a list of messages, got str"),
        ({"messages": []}, "messages: empty conversation"),
        ({"messages": ["hi"]}, "messages[0]: expected a message mapping, got str"),
        ({"messages": [{"content": "x"}]}, "messages[0].role: missing"),
        ({"messages": [turn("user", "x"), turn("bot", "y")]}, "messages[1].role: unknown role 'bot' (expected one of system, user, assistant, environment, tool)"),
        ({"messages": [{"role": "user"}]}, "messages[0].content: missing"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content: expected text, got int"),
        ({"messages": PROMPT}, "messages: no assistant turn to train on"),
    ],
)
def test_sft_problems(row, problem):
    assert sft_row(row) == problem


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"chosen": None}, "chosen: missing"),
        ({"rejected": []}, "rejected: empty conversation"),
        ({"rejected": PROMPT}, "rejected[1].role: the last turn must be the assistant's, got 'user'"),
        ({"chosen": [*PROMPT, {"role": "assistant", "content": None}]}, "chosen[2].content: missing"),
    ],
)
def test_dpo_structure_problems(change, problem):
    assert dpo_row({**DPO, **change}) == problem


def test_dpo_pair_problems():
    other_prompt = {**DPO, "rejected": [turn("user", "What is 2+4?"), turn("assistant", "\\boxed{6}")]}
    same_answer = {**DPO, "rejected": DPO["chosen"]}
    assert dpo_pair(other_prompt).startswith("rejected: prompt turns differ from chosen's")
    assert dpo_pair(same_answer) == "rejected: the final answer is identical to chosen's"


def test_all_of_reports_the_first_problem_in_order():
    both = all_of(dpo_row, dpo_pair)
    assert both(DPO) is None
    assert both({**DPO, "rejected": []}) == "rejected: empty conversation"  # dpo_pair would crash on it
    assert both({**DPO, "rejected": DPO["chosen"]}) == "rejected: the final answer is identical to chosen's"


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"messages": []}, "messages: empty conversation"),
        ({"messages": SFT["messages"]}, "messages[2].role: the prompt must end with a user turn, got 'assistant'"),
        ({"ground_truth": None}, "ground_truth: missing"),
        ({"verifier": None}, "verifier: verifier must be a name, a list of names or [name, weight] pairs, or a mapping; got None"),
        ({"verifier": ""}, "verifier: verifier names must not be empty"),
        ({"verifier": []}, "verifier: verifier must be a name, a list of names or [name, weight] pairs, or a mapping; got []"),
        ({"verifier": ["math", 3]}, "verifier: verifier list entries must be names or [name, weight] pairs, got 3"),
        ({"verifier": {"math": -1}}, "verifier: verifier weight for 'math' must be finite and >= 0, got -1.0"),
    ],
)
def test_rlvr_problems(change, problem):
    assert rlvr_row({**RLVR, **change}) == problem


@pytest.mark.parametrize("spec", ["math", ["math", "format"], [["math", 3], ["format", 1]], {"math": 3, "format": 1}])
def test_rlvr_accepts_every_verifier_spec_rewards_accepts(spec):
    assert rlvr_row({**RLVR, "verifier": spec}) is None


def test_rlvr_ground_truth_zero_is_present():
    assert rlvr_row({**RLVR, "ground_truth": 0}) is None


def test_rlvr_verifier_names_checked_against_the_registered_ones():
    check = rlvr_row_validator({"math", "ifeval"})
    assert check(RLVR) is None
    assert check({**RLVR, "verifier": "maths"}) == "verifier: unknown verifier 'maths' (registered: ifeval, math)"
    assert check({**RLVR, "verifier": ["math", "code"]}) == "verifier: unknown verifier 'code' (registered: ifeval, math)"
