"""Math verifiers: answer extraction, then equivalence.

- `math`: the answer is the last `\\boxed{...}` (balanced braces), else the
  phrase "final answer is X", else the last LaTeX span (`$...$`, `\\(...\\)`,
  `\\[...\\]`) or number, whichever ends later. It scores 1 when `math-verify`
  finds it mathematically equivalent to the label (LaTeX allowed), else 0.
- `strict_math`: only the Minerva format, "Final Answer: The final answer is
  X. I hope it is correct.", with the same equivalence.
- `gsm8k`: the last number in the answer (thousands commas allowed), compared
  numerically with the label (a GSM8K solution "... #### 72" is read as 72).

Plain rationals (integers, decimals, `a/b`, `\\frac{a}{b}`) are compared
exactly, and plain expressions numerically (`rewards.math_expr`), without
sympy. Everything else goes to `math-verify`; its parses are cached, since
an RL batch scores many samples against the same label.
"""

from __future__ import annotations

import cmath
import functools
import re
import threading
from fractions import Fraction
from typing import Any, Optional

from rewards import math_expr
from rewards.core import Result, register

_FINAL_PHRASE = re.compile(r"final answer is[:\s]*(.+?)(?:\.\s|\.?$|\n|I hope)", re.IGNORECASE | re.DOTALL)
_MINERVA = re.compile(r"Final Answer: The final answer is\s*(.+?)\.?\s*I hope it is correct", re.DOTALL)
_MINERVA_LOOSE = re.compile(r"Final Answer: The final answer is\s*(.+?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LATEX_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_RATIONAL = re.compile(r"^\s*(-?)\s*(?:(\d+(?:\.\d+)?)|\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)\s*/\s*(\d+))\s*$")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces kept), if any.

    >>> last_boxed(r"so \\boxed{\\frac{1}{2}} and then \\boxed{3}")
    '3'
    >>> last_boxed(r"\\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0 or text[start:i].strip() not in ("\\boxed", "\\fbox"):
        rest = text[start + len("\\boxed") :].strip().split()
        return rest[0].rstrip(".$") if rest and text.startswith("\\boxed", start) else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def extract_answer(text: str) -> Optional[str]:
    """The answer of a free-form math solution (see the module docstring), or None.

    >>> extract_answer("We get 12 apples, so the final answer is 14.")
    '14'
    >>> extract_answer("Thus $x = \\\\frac{3}{4}$.")
    'x = \\\\frac{3}{4}'
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = _FINAL_PHRASE.findall(text)
    if phrases:
        return phrases[-1].strip().strip("$").strip()
    spans = [(m.end(), next(g for g in m.groups() if g is not None)) for m in _LATEX_SPAN.finditer(text)]
    numbers = [(m.end(), m.group(0)) for m in _NUMBER.finditer(text)]
    candidates = spans + numbers
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1].strip()


def as_rational(text: str) -> Optional[Fraction]:
    """An exact value for plain rationals: 3, -0.25, 1,000, 3/4, \\frac{3}{4}; else None."""
    text = str(text).strip().strip("$").replace("\\!", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    match = _RATIONAL.match(text)
    if match is None:
        return None
    sign, dec, fn, fd, sn, sd = match.groups()
    if dec is not None:
        value = Fraction(dec)
    else:
        num, den = (fn, fd) if fn is not None else (sn, sd)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
    return -value if sign else value


def equivalent(answer: str, label: Any) -> bool:
    """True if `answer` and `label` are the same mathematical object.

    Cheapest decision first: exact rationals, identical LaTeX, numeric
    identity testing of plain expressions (`rewards.math_expr`), and only
    then math-verify's parser and symbolic comparison.
    """
    gold = str(label).strip()
    a, b = as_rational(answer), as_rational(gold)
    if a is not None and b is not None:
        if a == b:
            return True
        if a.denominator == 1 and b.denominator == 1:
            return False
    if _canonical(answer) == _canonical(gold):
        return True
    decided = math_expr.equivalent(answer, gold)
    if decided is not None:
        return decided
    return _math_verify(answer.strip(), gold)


def _canonical(latex: str) -> str:
    latex = re.sub(r"\\left|\\right|\\[,;!]|\\displaystyle|\s+", "", latex).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return latex.strip("$").rstrip(".")


def _wrap(expr: str) -> str:
    expr = expr.strip()
    return expr if expr.startswith("$") or "\\boxed" in expr else f"${expr}$"


@functools.lru_cache(maxsize=16384)
def _parse(expr: str):
    """math-verify's parse of one answer (cached: an RL group repeats its answers)."""
    from math_verify import parse

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    return parse(_wrap(expr), parsing_timeout=timeout)


@functools.lru_cache(maxsize=16384)
def _math_verify(answer: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed, answer_parsed = _parse(gold), _parse(answer)
    if not gold_parsed or not answer_parsed:
        return False
    if _differ_numerically(gold_parsed[0], answer_parsed[0]):
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))


# Values for free symbols when comparing expressions numerically: arbitrary, fixed, unlikely to be special.
_PROBE = (0.7318, 1.2913, 0.4271, 1.8139)


def _differ_numerically(a: Any, b: Any) -> bool:
    """True when two plain expressions have clearly different values at a probe point.

    A cheap, sound rejection before math-verify's symbolic comparison (sympy's
    simplify, the slow part): expressions that differ at a point are not equal.
    Anything that is not a plain finite expression is left to math-verify,
    and so are values closer than 1e-4 (math-verify rounds floats).
    """
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    try:
        symbols = sorted(a.free_symbols | b.free_symbols, key=str)
        point = {s: _PROBE[i % len(_PROBE)] + i for i, s in enumerate(symbols)}
        va, vb = complex(a.subs(point).evalf(15)), complex(b.subs(point).evalf(15))
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return False
    if not all(map(cmath.isfinite, (va, vb))):
        return False
    return abs(va - vb) > 1e-4 * max(1.0, abs(va), abs(vb))


def _check(answer: Optional[str], label: Any, where: str) -> Result:
    if label is None or str(label).strip() == "":
        raise ValueError("label (reference answer) is missing")
    if answer is None or not answer.strip():
        return Result(0.0, f"no answer found ({where})")
    ok = equivalent(answer, label)
    return Result(float(ok), "" if ok else f"answer {answer[:80]!r} is not {str(label)[:80]!r}")


@register("math")
def math_verifier(prediction: str, label: Any, **context: Any) -> Result:
    """1 if the extracted answer is mathematically equivalent to the label.

    >>> import rewards
    >>> rewards.score("math", "<think>half of one</think>So it is $\\\\boxed{\\\\frac{1}{2}}$.", "0.5")
    1.0
    >>> rewards.score("math", "The final answer is 7.", "\\\\frac{14}{2}")
    1.0
    >>> rewards.score("math", "I am not sure.", "3")
    0.0
    """
    return _check(extract_answer(prediction), label, "no \\boxed, phrase or number")


@register("strict_math")
def strict_math(prediction: str, label: Any, **context: Any) -> Result:
    """Like `math`, but the answer must be in the Minerva "Final Answer" format.

    >>> import rewards
    >>> rewards.score("strict_math", "Final Answer: The final answer is $6$. I hope it is correct.", "6")
    1.0
    >>> rewards.score("strict_math", "The answer is \\\\boxed{6}", "6")
    0.0
    """
    found = _MINERVA.findall(prediction) or _MINERVA_LOOSE.findall(prediction.strip())
    answer = found[-1].strip().strip("$").strip() if found else None
    return _check(answer, label, "no 'Final Answer: The final answer is X'")


def _gsm8k_reference(label: Any) -> Fraction:
    text = str(label)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    numbers = _NUMBER.findall(text)
    if not numbers:
        raise ValueError(f"gsm8k label has no number: {str(label)[:80]!r}")
    return Fraction(numbers[-1].replace(",", ""))


@register("gsm8k")
def gsm8k(prediction: str, label: Any, **context: Any) -> Result:
    """1 if the last number in the answer equals the label's number.

    >>> import rewards
    >>> rewards.score("gsm8k", "She pays 3 * 400 = 1,200 dollars. #### 1,200", "1200")
    1.0
    >>> rewards.score("gsm8k", "It is 12.50", "Janet ... #### 12.5")
    1.0
    >>> rewards.score("gsm8k", "It costs 7 dollars.", "8")
    0.0
    """
    reference = _gsm8k_reference(label)
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return Result(0.0, "no number in the answer")
    raw = numbers[-1].rstrip(",")
    try:
        value = Fraction(raw.replace(",", ""))
    except ValueError:
        return Result(0.0, f"unreadable number {raw!r}")
    return Result(float(value == reference), "" if value == reference else f"{raw} != {reference}")
