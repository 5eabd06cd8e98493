"""Encoded ground truth (rewards/decode.py): JSON, then base64 -> zlib -> a data-only unpickler; code labels in
open-instruct's shapes score."""

from __future__ import annotations

import base64
import collections
import doctest
import os
import pickle
import zlib

import pytest

import rewards
from rewards import decode
from rewards.code import parse_tests
from rewards.decode import DecodeError, decode_label

TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
ANSWER = "```python\ndef add(a, b):\n    return a + b\n```"


def encoded(value, protocol=pickle.DEFAULT_PROTOCOL) -> str:
    """What the released code data stores: base64 of a zlib-compressed pickle."""
    return base64.b64encode(zlib.compress(pickle.dumps(value, protocol=protocol))).decode()


class SystemCall:
    """A malicious payload: unpickling it with `pickle.loads` runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_doctests():
    assert doctest.testmod(decode).failed == 0


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_an_encoded_list_of_asserts_decodes(protocol):
    assert decode_label(encoded(TESTS, protocol)) == TESTS


def test_json_first_then_pickled_json_text_and_plain_values_pass_through():
    assert decode_label('["a", 1]') == ["a", 1]
    assert decode_label(encoded('[{"input": "1", "output": "2"}]')) == [{"input": "1", "output": "2"}]
    assert decode_label(encoded({"tests": TESTS, "n": 2, "ok": True, "none": None, "raw": b"x"}))["n"] == 2
    assert decode_label(TESTS) is TESTS
    assert decode_label({"tests": TESTS}) == {"tests": TESTS}


def test_a_payload_that_would_call_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    payload = encoded(SystemCall(marker))
    with pytest.raises(DecodeError, match=r"cannot decode: the pickle names (posix|os|nt)\.system"):
        decode_label(payload)
    assert not marker.exists()
    # the same payload through the verifier scores 0 with the reason, and runs nothing either
    result = rewards.evaluate("code", ANSWER, payload)
    assert result.score == 0.0 and not result.scored and "cannot decode" in result.reason
    assert not marker.exists()


def test_any_class_is_refused_even_a_harmless_one():
    with pytest.raises(DecodeError, match="collections.OrderedDict"):
        decode_label(encoded(collections.OrderedDict(a=1), protocol=2))
    with pytest.raises(DecodeError, match=r"names (__builtin__|builtins)\.set"):
        decode_label(encoded({1, 2}, protocol=2))


@pytest.mark.parametrize("text, problem", [
    ("not json at all!", "neither JSON nor base64"),
    (base64.b64encode(b"plain bytes").decode(), "base64 but not zlib-compressed"),
    (base64.b64encode(zlib.compress(b"not a pickle")).decode(), "not a pickle"),
])
def test_undecodable_strings_say_why(text, problem):
    with pytest.raises(DecodeError, match=problem):
        decode_label(text)


def test_code_labels_in_open_instruct_shapes_score():
    assert rewards.score("code", ANSWER, encoded(TESTS)) == 1.0  # the released data's encoding
    assert rewards.score("code", ANSWER, TESTS) == 1.0  # a bare list of asserts
    assert rewards.score("code", ANSWER, {"tests": TESTS[:1] + ["assert add(2, 2) == 5"]}) == 0.5  # as before
    stdio = "```python\nprint(sum(map(int, input().split())))\n```"
    cases = [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "5"}]
    assert rewards.score("code_stdio", stdio, encoded(cases)) == 0.5


@pytest.mark.parametrize("label, kind, problem", [
    (["assert True", 3], "code", "code tests must be strings of Python code"),
    ([{"input": "1"}], "code_stdio", r"code_stdio tests must be \{'input'"),
    ([], "code", "at least one test"),
])
def test_label_shapes_are_checked(label, kind, problem):
    with pytest.raises(ValueError, match=problem):
        parse_tests(label, kind)
