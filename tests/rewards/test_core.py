"""rewards.core: registration, lookup, think stripping, score normalisation, combined specs."""

from __future__ import annotations

import math

import pytest

import rewards
from rewards import core


@pytest.fixture
def scratch_names():
    """Verifiers registered by a test are removed afterwards."""
    before = set(core.VERIFIERS.names())
    yield
    for name in set(core.VERIFIERS.names()) - before:
        del core.VERIFIERS._items[name]
        core._RAW.discard(name)


def test_builtins_are_registered():
    expected = {"math", "strict_math", "gsm8k", "ifeval", "code", "code_stdio", "string_match", "string_f1",
                "max_length", "up_to_max_length", "format", "llm_judge"}
    assert expected <= set(rewards.names())
    assert rewards.names() == sorted(rewards.names())


def test_unknown_name_raises_listing_valid_names():
    with pytest.raises(rewards.UnknownNameError) as info:
        rewards.score("maths", "x", "1")
    message = str(info.value)
    assert "'maths'" in message and "Did you mean 'math'" in message and "gsm8k" in message


def test_register_function_and_score_gets_answer_text(scratch_names):
    seen = {}

    @rewards.register("t_echo")
    def echo(prediction, label, **context):
        seen.update(prediction=prediction, label=label, context=context)
        return prediction == label

    assert rewards.score("t_echo", "<think>not this</think>yes", "yes", extra=3) == 1.0
    assert seen == {"prediction": "yes", "label": "yes", "context": {"extra": 3}}
    assert rewards.score("t_echo", "<think>unfinished yes", "yes") == 0.0
    assert seen["prediction"] == ""


def test_register_class_is_instantiated_once(scratch_names):
    made = []

    @rewards.register("t_class")
    class Counter:
        def __init__(self):
            made.append(self)
            self.calls = 0

        def __call__(self, prediction, label, **context):
            self.calls += 1
            return 0.25

    assert [rewards.score("t_class", "a", None) for _ in range(3)] == [0.25] * 3
    assert len(made) == 1 and made[0].calls == 3


def test_conflicting_registration_raises_same_definition_is_noop(scratch_names):
    def first(prediction, label, **context):
        return 1.0

    rewards.register("t_dup")(first)
    rewards.register("t_dup")(first)  # re-import of the same definition
    with pytest.raises(ValueError, match="already registered"):
        rewards.register("t_dup")(lambda p, l, **c: 0.0)


@pytest.mark.parametrize(
    "returned, score, scored",
    [(True, 1.0, True), (False, 0.0, True), (1.7, 1.0, True), (-2, 0.0, True), (0.3, 0.3, True),
     (None, 0.0, False), (float("nan"), 0.0, False), ("high", 0.0, False)],
)
def test_return_values_are_normalised(scratch_names, returned, score, scored):
    rewards.register("t_value", override=True)(lambda p, l, **c: returned)
    result = rewards.evaluate("t_value", "x", None)
    assert result.score == score and result.scored is scored
    assert 0.0 <= result.score <= 1.0 and not math.isnan(result.score)


def test_none_and_exceptions_are_counted_with_reasons(scratch_names):
    @rewards.register("t_raise")
    def broken(prediction, label, **context):
        raise KeyError("missing")

    rewards.register("t_none")(lambda p, l, **c: rewards.Result(None, "label out of range"))
    rewards.unscored_counts(reset=True)
    bad = rewards.evaluate("t_raise", "x", None)
    assert bad.score == 0.0 and not bad.scored and bad.reason.startswith("error: KeyError")
    assert rewards.evaluate("t_none", "x", None).reason == "label out of range"
    assert rewards.evaluate("t_none", "x", None).reason == "label out of range"
    assert rewards.unscored_counts() == {"t_raise: error": 1, "t_none: label out of range": 2}


def test_non_text_prediction_scores_zero_without_raising():
    for prediction in (None, 42, b"bytes", ["list"]):
        result = rewards.evaluate("math", prediction, "4")
        assert result.score == 0.0 and not result.scored and "not text" in result.reason


def test_result_supports_item_access():
    result = rewards.Result(0.5, "half")
    assert result["score"] == 0.5 and result["reason"] == "half" and result["scored"] is True
    with pytest.raises(KeyError):
        result["other"]


def test_combined_verifiers_weighted_mean():
    text = "<think>ok</think>The answer is \\boxed{4}"
    assert rewards.score(["math", "format"], text, "4") == 1.0
    assert rewards.score({"math": 3, "format": 1}, "<think>a</think><think>b</think>\\boxed{4}", "4") == 0.75
    assert rewards.score([["math", 1], ["format", 3]], "\\boxed{5}", "4") == 0.0


@pytest.mark.parametrize("spec", [[], 3, [["math"]], {"math": -1}, {"math": 0}])
def test_malformed_specs_raise(spec):
    with pytest.raises(ValueError):
        rewards.parse_spec(spec)


def test_options_give_defaults_that_context_overrides():
    answer = "```python\ndef f(x):\n    return x\n```"
    label = {"tests": ["assert f(1) == 1", "assert f(2) == 3"]}
    assert rewards.evaluate("code", answer, label).score == 0.5
    assert rewards.evaluate("code", answer, label, options={"code": {"pass_threshold": 0.99}}).score == 0.0
    assert rewards.evaluate("code", answer, label, options={"code": {"pass_threshold": 0.99}}, pass_threshold=0.5).score == 1.0


def test_answer_text():
    assert rewards.answer_text("a</think>b</think>c") == "c"
    assert rewards.answer_text("plain") == "plain"
    assert rewards.answer_text("<think>open") == ""


def test_raw_verifiers_see_the_think_block(scratch_names):
    rewards.register("t_raw", raw=True)(lambda p, l, **c: float(p.startswith("<think>")))
    assert rewards.score("t_raw", "<think>x</think>y") == 1.0
