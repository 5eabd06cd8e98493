"""Code verifiers: run the program from a prediction against tests, in the sandbox.

The program is the last fenced code block tagged python (or untagged) in the
answer, or the whole answer when it has none. All tests of one program run
in one sandbox (see `rewards.sandbox`): the program is compiled once and each
test runs in a fresh fork, so a program costs one interpreter start however
many tests it has.

- `code`: label `{"tests": ["assert f(1) == 2", ...]}` (or the list alone, or
  either encoded: `parse_tests`); a test passes when
  the program and then the test run to the end without an exception.
- `code_stdio`: label `{"tests": [{"input": "...", "output": "..."}, ...]}`
  (or the list alone, or either encoded);
  a test passes when the program exits cleanly and its stdout equals the
  expected output, compared line by line with trailing whitespace stripped
  (trailing blank lines ignored).

Score: the fraction of tests passed; with the option `pass_threshold` (Olmo 3
uses 0.99), 1 when that fraction reaches the threshold, else 0. Options
(recipe `verifiers.options.code` / `.code_stdio`, or context keys):
`pass_threshold`, `cpu_seconds`, `wall_seconds`, `memory_mb` per test.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from rewards.core import Result, register
from rewards.decode import decode_label
from rewards.sandbox import Case, Limits, run_program

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


def extract_program(text: str) -> str:
    """The last fenced python (or untagged) block, else the whole text.

    >>> extract_program("Here:\\n```python\\nprint(1)\\n```\\nand\\n```text\\nout\\n```")
    'print(1)\\n'
    >>> extract_program("print(2)")
    'print(2)'
    """
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks else text


def normalize_output(text: str) -> str:
    """Lines with trailing whitespace stripped, trailing blank lines dropped, \\r\\n as \\n."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def parse_tests(label: Any, kind: str) -> list:
    """The tests of a `code` or `code_stdio` label, checked for `kind`'s shape.

    The label is `{"tests": [...]}` or the list itself (open-instruct's
    shape), either of them as is, as JSON text, or encoded as open-instruct's
    released code data stores it (base64 of a zlib-compressed pickle, decoded
    without running anything: `rewards.decode`). Raises ValueError.

    >>> parse_tests('["assert f() == 1"]', "code")
    ['assert f() == 1']
    """
    label = decode_label(label)
    tests = label.get("tests") if isinstance(label, dict) else label
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"{kind} label must be a list of tests or {{'tests': [...]}}, with at least one test")
    is_test, shape = _TEST_SHAPES[kind]
    if not all(is_test(t) for t in tests):
        raise ValueError(f"{kind} tests must be {shape}")
    return tests


# verifier -> (what one of its tests is, that in words)
_TEST_SHAPES = {
    "code": (lambda t: isinstance(t, str), "strings of Python code"),
    "code_stdio": (lambda t: isinstance(t, dict) and "output" in t, "{'input': ..., 'output': ...} objects"),
}


def _limits(cpu_seconds: Optional[float], wall_seconds: Optional[float], memory_mb: Optional[float]) -> Limits:
    base = Limits()
    cpu = int(cpu_seconds or base.cpu_seconds)
    return Limits(
        cpu_seconds=cpu,
        wall_seconds=float(wall_seconds or max(base.wall_seconds, cpu + 2)),
        memory_bytes=int(memory_mb * (1 << 20)) if memory_mb else base.memory_bytes,
    )


def _score(passed: list[bool], pass_threshold: Optional[float], first_failure: str) -> Result:
    fraction = sum(passed) / len(passed)
    reason = f"{sum(passed)}/{len(passed)} tests passed" + (f"; first failure: {first_failure}" if first_failure else "")
    if pass_threshold is not None:
        return Result(float(fraction >= float(pass_threshold)), reason)
    return Result(fraction, reason)


def _failure(result) -> str:
    detail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    return result.status + (f" ({detail[0][:200]})" if detail else "")


@register("code")
def code(prediction: str, label: Any, pass_threshold: Optional[float] = None, cpu_seconds: Optional[float] = None,
         wall_seconds: Optional[float] = None, memory_mb: Optional[float] = None, **context: Any) -> Result:
    """Fraction of assert tests that pass after running the program.

    >>> import rewards
    >>> answer = "```python\\ndef add(a, b):\\n    return a + b\\n```"
    >>> rewards.score("code", answer, {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]})
    0.5
    >>> rewards.score("code", answer, {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]}, pass_threshold=0.99)
    0.0
    """
    tests = parse_tests(label, "code")
    run = run_program(extract_program(prediction), [Case(code=t) for t in tests], _limits(cpu_seconds, wall_seconds, memory_mb))
    passed = [c.passed for c in run.cases]
    failures = [_failure(c) for c in run.cases if not c.passed]
    return _score(passed, pass_threshold, run.error or (failures[0] if failures else ""))


@register("code_stdio")
def code_stdio(prediction: str, label: Any, pass_threshold: Optional[float] = None, cpu_seconds: Optional[float] = None,
               wall_seconds: Optional[float] = None, memory_mb: Optional[float] = None, **context: Any) -> Result:
    """Fraction of stdin/stdout tests whose output matches.

    >>> import rewards
    >>> answer = "```python\\nprint(sum(map(int, input().split())))\\n```"
    >>> rewards.score("code_stdio", answer, {"tests": [{"input": "1 2", "output": "3"}, {"input": "5 5", "output": "10\\n"}]})
    1.0
    """
    tests = parse_tests(label, "code_stdio")
    run = run_program(extract_program(prediction), [Case(stdin=str(t.get("input", ""))) for t in tests],
                      _limits(cpu_seconds, wall_seconds, memory_mb))
    passed, first = [], ""
    for test, result in zip(tests, run.cases):
        ok = result.passed and normalize_output(result.stdout) == normalize_output(str(test["output"]))
        passed.append(ok)
        if not ok and not first:
            first = _failure(result) if not result.passed else "wrong output"
    return _score(passed, pass_threshold, run.error or first)
