"""rewards.code: program extraction, assert tests, stdin/stdout tests, thresholds, malformed input."""

from __future__ import annotations

import pytest

import rewards
from rewards.code import extract_program, normalize_output

ADD = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
ECHO_SUM = "```py\nimport sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n```"


def test_code_all_pass_some_pass_none_pass():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]
    assert rewards.score("code", ADD, {"tests": tests}) == 1.0
    assert rewards.score("code", ADD, {"tests": tests + ["assert add(1, 1) == 3"]}) == 0.75
    assert rewards.score("code", "```python\ndef add(a, b):\n    return a - b\n```", {"tests": tests[:2]}) == 0.0


def test_code_pass_threshold():
    tests = ["assert add(1, 2) == 3"] * 99 + ["assert add(1, 1) == 3"]
    label = {"tests": tests}
    assert rewards.score("code", ADD, label, pass_threshold=0.99) == 1.0
    assert rewards.score("code", ADD, {"tests": tests[-2:]}, pass_threshold=0.99) == 0.0


@pytest.mark.parametrize(
    "prediction",
    ["", "def add(a, b) return a + b", "```python\nimport this_module_does_not_exist\n```", "```python\nraise SystemExit(3)\n```",
     "```python\ndef add(a, b):\n```", "\x00\x01\x02", "<think>```python\ndef add(a, b):\n    return a + b\n```</think>"],
)
def test_code_broken_programs_score_zero(prediction):
    result = rewards.evaluate("code", prediction, {"tests": ["assert add(1, 2) == 3"]})
    assert result.score == 0.0 and result.scored


def test_exit_does_not_count_as_passing():
    sneaky = "```python\nimport os, sys\ndef add(a, b):\n    sys.exit(0)\n```"
    assert rewards.score("code", sneaky, {"tests": ["assert add(1, 2) == 3"]}) == 0.0
    sneaky = "```python\nimport os\ndef add(a, b):\n    os._exit(0)\n```"
    assert rewards.score("code", sneaky, {"tests": ["assert add(1, 2) == 3"]}) == 0.0


def test_tests_are_isolated_from_each_other():
    stateful = "```python\nseen = []\ndef add(a, b):\n    seen.append(1)\n    return a + b + len(seen) - 1\n```"
    assert rewards.score("code", stateful, {"tests": ["assert add(1, 2) == 3"] * 3}) == 1.0


def test_code_stdio_compares_output_per_line():
    tests = [{"input": "1 2", "output": "3"}, {"input": "5 5\n", "output": "10\n\n"}, {"input": "", "output": "0"}]
    assert rewards.score("code_stdio", ECHO_SUM, {"tests": tests}) == 1.0
    assert rewards.score("code_stdio", ECHO_SUM, {"tests": tests + [{"input": "1", "output": "2"}]}) == 0.75
    padded = "```python\nprint('a  ')\nprint('b')\nprint()\n```"
    assert rewards.score("code_stdio", padded, {"tests": [{"input": "", "output": "a\nb"}]}) == 1.0
    assert rewards.score("code_stdio", padded, {"tests": [{"input": "", "output": "a b"}]}) == 0.0


def test_code_stdio_reads_stdin_every_way():
    variants = [
        "print(int(input()) * 2)",
        "import sys\nprint(int(sys.stdin.readline()) * 2)",
        "import sys\nprint(int(sys.stdin.buffer.read()) * 2)",
        "print(int(open(0).read()) * 2)",
        "import os\nprint(int(os.read(0, 100)) * 2)",
    ]
    for program in variants:
        assert rewards.score("code_stdio", program, {"tests": [{"input": "21\n", "output": "42"}]}) == 1.0, program


def test_code_stdio_crash_after_output_fails():
    program = "print(3)\nraise ValueError('late')"
    result = rewards.evaluate("code_stdio", program, {"tests": [{"input": "", "output": "3"}]})
    assert result.score == 0.0 and "ValueError" in result.reason


def test_code_stdio_label_as_json_text():
    label = '{"tests": [{"input": "2 2", "output": "4"}]}'
    assert rewards.score("code_stdio", ECHO_SUM, label) == 1.0


@pytest.mark.parametrize(
    "verifier, label",
    [("code", {"tests": []}), ("code", {"tests": [1, 2]}), ("code", "not json"), ("code", None),
     ("code_stdio", {"tests": ["assert x"]}), ("code_stdio", {"cases": []}), ("code_stdio", [{"input": "1"}])],
)
def test_malformed_labels_are_unscored(verifier, label):
    result = rewards.evaluate(verifier, ADD, label)
    assert result.score == 0.0 and not result.scored


def test_extract_program():
    assert extract_program("```python\na = 1\n```\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_program("```\nc = 3\n```") == "c = 3\n"
    assert extract_program("```bash\nls\n```\nx = 1") == "```bash\nls\n```\nx = 1"
    assert extract_program("```python\nunclosed") == "```python\nunclosed"
    assert normalize_output("a \r\nb\t\n\n\n") == "a\nb"
