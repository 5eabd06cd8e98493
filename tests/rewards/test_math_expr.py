"""rewards.math_expr: the numeric pre-check decides only where math-verify agrees."""

from __future__ import annotations

import pytest

from rewards import math_expr
from rewards.math import _math_verify

PAIRS = [
    ("(x+5)^2", "x^2 + 10x + 25"), ("(x+5)^2", "x^2 + 10x + 24"), ("\\sqrt{50}", "5\\sqrt{2}"), ("\\sqrt{48}", "5\\sqrt{2}"),
    ("\\frac{\\pi}{5}", "\\pi/5"), ("\\frac{\\pi}{5}", "\\pi/6"), ("\\frac{1}{2}x", "x/2"), ("2x", "x/2"),
    ("\\sqrt[3]{8}", "2"), ("2^{10}", "1024"), ("2^{10}", "1000"), ("-x^2", "-(x^2)"), ("x^2", "(-x)^2"),
    ("\\sqrt{x^2}", "x"), ("3\\cdot 4", "12"), ("12 \\div 4", "3"), ("\\frac{3}{4}", "0.75"), ("\\frac{2}{3}", "0.67"),
    ("\\sin x", "\\sin(x)"), ("\\frac{x+1}{x-1}", "1 + \\frac{2}{x-1}"), ("\\frac{x+1}{x-1}", "1 + \\frac{1}{x-1}"),
    ("a^2 - b^2", "(a-b)(a+b)"), ("a^2 - b^2", "(a-b)^2"), ("\\pi r^2", "r^2\\pi"), ("7", "\\frac{14}{2}"),
]


@pytest.mark.parametrize("answer, gold", PAIRS)
def test_decisions_agree_with_math_verify(answer, gold):
    decided = math_expr.equivalent(answer, gold)
    assert decided is not None, "this pair is plain enough to be decided numerically"
    assert decided == _math_verify(answer, gold)


@pytest.mark.parametrize(
    "answer, gold",
    [("[0, 1)", "[0,1)"), ("x = 5", "5"), ("50\\%", "0.5"), ("e^2", "e^2"), ("1/2x", "x/2"), ("2 3", "6"), ("2^10", "1024"),
     ("\\text{yes}", "yes"), ("\\{1, 2\\}", "\\{2, 1\\}"), ("\\infty", "\\infty"), ("0.333333", "\\frac{1}{3}"), ("(" * 600, "1")],
)
def test_anything_not_plain_is_left_to_math_verify(answer, gold):
    assert math_expr.equivalent(answer, gold) is None
