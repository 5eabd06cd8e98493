"""Fast numeric equivalence for plain LaTeX expressions, before math-verify.

math-verify parses LaTeX with an ANTLR grammar and proves equality with
sympy's simplify: 10-100 ms per comparison, the bulk of math scoring time.
Most answers are plain expressions (numbers, fractions, roots, powers, pi,
polynomials in one-letter variables). For those, both sides are parsed
here into a small expression tree and evaluated at fixed probe points
(positive and negative, irrational-looking) with complex arithmetic:

- equal everywhere to 1e-12 (relative): equivalent (identity testing; a
  rational function equal at several generic points is equal);
- different somewhere by more than 1e-4: not equivalent;
- anything in between, or anything not plain (sets, intervals, equations,
  text, units, percentages, e or i, multi-letter names): undecided, and
  math-verify decides.
"""

from __future__ import annotations

import cmath
import re
from typing import Callable, Optional

Node = tuple
PROBES = (0.7318, -1.2913, 2.4271, -0.3617)
_TOKEN = re.compile(r"\s*(\d+\.\d+|\d+|\\[a-zA-Z]+|[a-zA-Z]|[-+*/^(){}\[\]])")
_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\\displaystyle|\$")
_UNDECIDED = re.compile(r"[=<>,;%|!'_&]|\\\\|\\\{|[a-zA-Z]{2,}|\.\.\.")
_FUNCTIONS: dict[str, Callable] = {
    "\\sin": cmath.sin, "\\cos": cmath.cos, "\\tan": cmath.tan, "\\ln": cmath.log, "\\log": cmath.log, "\\exp": cmath.exp,
}
_TIMES = ("*", "\\cdot", "\\times")
_DIVIDE = ("/", "\\div")


class _Undecided(Exception):
    pass


def parse(text: str) -> Optional[Node]:
    """An expression tree for plain LaTeX, or None when it is not plain enough."""
    text = _NOISE.sub(" ", text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")).strip()
    if not text or len(text) > 400 or _UNDECIDED.search(re.sub(r"\\[a-zA-Z]+", " ", text)) or re.search(r"[eiEI]", re.sub(r"\\[a-zA-Z]+", "", text)):
        return None
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            return None
        tokens.append(match.group(1))
        pos = match.end()
    try:
        parser = _Parser(tokens)
        tree = parser.expr()
        if parser.i != len(tokens):
            return None
        return tree
    except (_Undecided, IndexError, RecursionError):
        return None


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> Optional[str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: Optional[str] = None) -> str:
        token = self.tokens[self.i]
        if expected is not None and token != expected:
            raise _Undecided(token)
        self.i += 1
        return token

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            node = (self.take(), node, self.term())
        return node

    def term(self) -> Node:
        node, divided = self.unary(), False
        while True:
            token = self.peek()
            if token in _TIMES or token in _DIVIDE:
                self.take()
                node, divided = ("*" if token in _TIMES else "/", node, self.unary()), token in _DIVIDE
            elif token is not None and self._starts_atom(token):
                if _is_number(token) and self.tokens[self.i - 1][-1:].isdigit():
                    raise _Undecided("two numbers in a row")
                if divided:
                    raise _Undecided("1/2x: is it x/2 or 1/(2x)?")
                node = ("*", node, self.power())
            else:
                return node

    def unary(self) -> Node:
        if self.peek() in ("-", "+"):
            sign = self.take()
            operand = self.unary()
            return ("neg", operand) if sign == "-" else operand
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            if self.peek() == "{":
                exponent = self.group()
            else:
                token = self.take()
                if _is_number(token) and len(token) > 1:
                    raise _Undecided("unbraced multi-digit exponent")
                exponent = self._leaf(token)
            return ("^", base, exponent)
        return base

    def group(self) -> Node:
        self.take("{")
        node = self.expr()
        self.take("}")
        return node

    def atom(self) -> Node:
        token = self.take()
        if token == "(":
            node = self.expr()
            self.take(")")
            return node
        if token == "{":
            self.i -= 1
            return self.group()
        if token == "\\frac":
            return ("/", self.group(), self.group())
        if token == "\\sqrt":
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                return ("^", self.group(), ("/", ("num", 1.0), index))
            return ("^", self.group(), ("num", 0.5))
        if token in _FUNCTIONS:
            return ("call", token, self.power())
        return self._leaf(token)

    def _leaf(self, token: str) -> Node:
        if _is_number(token):
            return ("num", float(token))
        if token == "\\pi":
            return ("num", cmath.pi.real)
        if len(token) == 1 and token.isalpha():
            return ("var", token)
        raise _Undecided(token)

    @staticmethod
    def _starts_atom(token: str) -> bool:
        return token in ("(", "{", "\\frac", "\\sqrt", "\\pi") or token in _FUNCTIONS or _is_number(token) or (len(token) == 1 and token.isalpha())


def _is_number(token: str) -> bool:
    return token[:1].isdigit()


def evaluate(node: Node, point: dict[str, float]) -> complex:
    kind = node[0]
    if kind == "num":
        return complex(node[1])
    if kind == "var":
        return complex(point[node[1]])
    if kind == "neg":
        return -evaluate(node[1], point)
    if kind == "call":
        return _FUNCTIONS[node[1]](evaluate(node[2], point))
    left, right = evaluate(node[1], point), evaluate(node[2], point)
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    if kind == "/":
        return left / right
    return left**right


def _variables(node: Node) -> set[str]:
    if node[0] == "var":
        return {node[1]}
    return set().union(*(_variables(child) for child in node[1:] if isinstance(child, tuple)))


def equivalent(answer: str, gold: str) -> Optional[bool]:
    """True / False when plain-expression evaluation decides, None when math-verify must.

    >>> equivalent("(x+5)^2", "x^2 + 10x + 25"), equivalent("\\\\sqrt{50}", "5\\\\sqrt{2}"), equivalent("x^2", "x^3")
    (True, True, False)
    >>> equivalent("[0, 1)", "[0,1)") is None
    True
    """
    a, b = parse(answer), parse(gold)
    if a is None or b is None:
        return None
    names = sorted(_variables(a) | _variables(b))
    worst = 0.0
    for shift, _ in enumerate(PROBES if names else PROBES[:1]):
        point = {name: PROBES[(shift + k) % len(PROBES)] + 0.1 * k for k, name in enumerate(names)}
        try:
            va, vb = evaluate(a, point), evaluate(b, point)
        except (ZeroDivisionError, OverflowError, ValueError, RecursionError):
            return None
        if not (cmath.isfinite(va) and cmath.isfinite(vb)):
            return None
        difference = abs(va - vb) / max(1.0, abs(va), abs(vb))
        if difference > 1e-4:
            return False
        worst = max(worst, difference)
    return True if worst <= 1e-12 else None
