"""rewards.math: extraction, equivalence, strict Minerva format, GSM8K numbers."""

from __future__ import annotations

import pytest

import rewards
from rewards.math import as_rational, extract_answer, last_boxed


@pytest.mark.parametrize(
    "prediction, label",
    [
        ("So the answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),
        ("We find \\boxed{x^2 + 2x + 1}", "(x+1)^2"),
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"),
        ("first \\boxed{3} then corrected: \\boxed{4}", "4"),
        ("Therefore, the final answer is 12.", "12"),
        ("The total is 1,000 apples", "1000"),
        ("Thus $x = \\frac{2}{3}$", "\\frac{2}{3}"),
        ("<think>maybe 5? no.</think>It is \\boxed{6}", "6"),
        ("\\boxed{[0, 1)}", "[0,1)"),
        ("\\boxed{-7}", "-7"),
    ],
)
def test_math_passes_equivalent_answers(prediction, label):
    assert rewards.score("math", prediction, label) == 1.0


@pytest.mark.parametrize(
    "prediction, label",
    [
        ("\\boxed{5}", "4"),
        ("\\boxed{4} was wrong, it is \\boxed{5}", "4"),
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("<think>the answer is \\boxed{4}</think>I give up", "4"),
        ("the final answer is x+2", "x+1"),
    ],
)
def test_math_fails_wrong_answers(prediction, label):
    assert rewards.score("math", prediction, label) == 0.0


@pytest.mark.parametrize("prediction", ["", "no idea", "\\boxed{", "\\boxed{}", "$$", "\x00\x01", "\\frac{1}{0}" * 50, "}" * 1000])
def test_math_malformed_outputs_score_zero(prediction):
    result = rewards.evaluate("math", prediction, "4")
    assert result.score == 0.0


def test_math_missing_label_is_unscored_not_raised():
    result = rewards.evaluate("math", "\\boxed{4}", None)
    assert result.score == 0.0 and not result.scored and "label" in result.reason


def test_strict_math_needs_minerva_format():
    good = "Some work.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert rewards.score("strict_math", good, "0.5") == 1.0
    assert rewards.score("strict_math", "Final Answer: The final answer is 3", "3") == 1.0
    assert rewards.score("strict_math", "\\boxed{3}", "3") == 0.0
    assert rewards.score("strict_math", "Final Answer: The final answer is 4. I hope it is correct.", "3") == 0.0


@pytest.mark.parametrize(
    "prediction, label, expected",
    [
        ("so 3 + 4 = 7", "7", 1.0),
        ("That is $1,234.", "Natalia sold ... #### 1234", 1.0),
        ("answer: 12.50", "12.5", 1.0),
        ("-3 degrees", "-3", 1.0),
        ("It is 7, no wait, 8.", "7", 0.0),
        ("no numbers here", "7", 0.0),
        ("", "7", 0.0),
    ],
)
def test_gsm8k(prediction, label, expected):
    assert rewards.score("gsm8k", prediction, label) == expected


def test_gsm8k_label_without_number_is_unscored():
    result = rewards.evaluate("gsm8k", "4", "#### none")
    assert not result.scored and "no number" in result.reason


def test_extraction_helpers():
    assert last_boxed("\\boxed{\\frac{a}{b}} and \\boxed{c}") == "c"
    assert last_boxed("\\boxed{{nested}{x}}") == "{nested}{x}"
    assert last_boxed("\\boxed 5.") == "5"
    assert last_boxed("no box") is None
    assert extract_answer("values 3 and then $y=4$") == "y=4"
    assert extract_answer("values $y=4$ and then 5") == "5"
    assert extract_answer("nothing") is None
    assert as_rational("\\frac{6}{8}") == as_rational("0.75") == as_rational("3/4")
    assert as_rational("1,000") == 1000 and as_rational("x") is None and as_rational("1/0") is None
