"""rewards.text: string match, token F1, length targets, Think format."""

from __future__ import annotations

import pytest

import rewards


@pytest.mark.parametrize(
    "prediction, label, expected",
    [
        ("<answer>The Eiffel Tower.</answer>", "eiffel tower", 1.0),
        ("<think>Paris?</think>  Paris ", "paris", 1.0),
        ("<answer>a</answer> then <answer>Rome</answer>", ["London", "Rome"], 1.0),
        ("Paris", "London", 0.0),
        ("<think>Paris</think>", "Paris", 0.0),
        ("", "Paris", 0.0),
    ],
)
def test_string_match(prediction, label, expected):
    assert rewards.score("string_match", prediction, label) == expected


def test_string_match_missing_label_is_unscored():
    result = rewards.evaluate("string_match", "x", None)
    assert not result.scored and result.score == 0.0


def test_string_f1():
    assert rewards.score("string_f1", "<answer>the cat sat</answer>", "a cat sat down") == pytest.approx(0.8)
    assert rewards.score("string_f1", "dog", ["cat", "dog"]) == 1.0
    assert rewards.score("string_f1", "dog", "cat") == 0.0
    assert rewards.score("string_f1", "", "cat") == 0.0
    assert rewards.score("string_f1", "!!!", "...") == 1.0  # both normalise to nothing


def test_max_length_and_up_to_max_length():
    assert rewards.score("max_length", "a b c d", 4) == 1.0
    assert rewards.score("max_length", "a b", 4) == 0.5
    assert rewards.score("max_length", "a " * 12, 4) == 0.0
    assert rewards.score("max_length", "whatever", 100, num_tokens=90) == pytest.approx(0.9)
    assert rewards.score("max_length", "a b", 4, scale=8) == 0.75
    assert rewards.score("up_to_max_length", "a b", 4) == 1.0
    assert rewards.score("up_to_max_length", "a b c d e f", 4) == 0.5
    assert rewards.score("up_to_max_length", "x", 10, num_tokens=30) == 0.0
    for name in ("max_length", "up_to_max_length"):
        assert not rewards.evaluate(name, "a", "not a number").scored
        assert not rewards.evaluate(name, "a", 0).scored


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("<think>reasoning</think>The answer.", 1.0),
        ("\n<think>\nr\n</think>\n\nanswer", 1.0),
        ("<think></think>answer", 1.0),
        ("<think>reasoning</think>   ", 0.0),
        ("<think>a</think>b<think>c</think>d", 0.0),
        ("preamble <think>a</think>b", 0.0),
        ("<think>never closed", 0.0),
        ("no think at all", 0.0),
        ("</think><think>x", 0.0),
    ],
)
def test_format(prediction, expected):
    assert rewards.score("format", prediction) == expected


def test_format_with_think_opened_by_the_prompt():
    assert rewards.score("format", "reasoning</think>answer", think_in_prompt=True) == 1.0
    assert rewards.score("format", "<think>reasoning</think>answer", think_in_prompt=True) == 0.0
