"""Text verifiers: exact match, token F1, length targets, and the Think format.

`string_match` and `string_f1` read the answer inside the last
`<answer>...</answer>` when there is one, else the whole answer text (the
text after `</think>`). Labels may be one string or a list of acceptable
strings (the best match counts).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Optional

from rewards.core import Result, register

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def tagged_answer(text: str) -> str:
    """The content of the last `<answer>...</answer>`, else the text itself, stripped."""
    found = _ANSWER_TAG.findall(text)
    return (found[-1] if found else text).strip()


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCT))
    return " ".join(text.split())


def _labels(label: Any) -> list[str]:
    if isinstance(label, (list, tuple)):
        if not label:
            raise ValueError("label list is empty")
        return [str(x) for x in label]
    if label is None:
        raise ValueError("label is missing")
    return [str(label)]


@register("string_match")
def string_match(prediction: str, label: Any, **context: Any) -> float:
    """1 if the answer equals a label after normalisation (case, punctuation, articles), else 0.

    >>> import rewards
    >>> rewards.score("string_match", "<think>hmm</think><answer>The Eiffel Tower</answer>", "eiffel tower")
    1.0
    >>> rewards.score("string_match", "Paris, I think", ["London", "Rome"])
    0.0
    """
    answer = normalize_answer(tagged_answer(prediction))
    return float(any(answer == normalize_answer(ref) for ref in _labels(label)))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after `normalize_answer`.

    >>> token_f1("the cat sat", "a cat sat down")
    0.8
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@register("string_f1")
def string_f1(prediction: str, label: Any, **context: Any) -> float:
    """Token-level F1 between the answer and the best-matching label.

    >>> import rewards
    >>> rewards.score("string_f1", "<answer>the cat sat</answer>", "a cat sat down")
    0.8
    """
    answer = tagged_answer(prediction)
    return max(token_f1(answer, ref) for ref in _labels(label))


def _length(prediction: str, context: dict) -> int:
    """Tokens when the caller passes `num_tokens` (RLVR does), else whitespace-separated words."""
    if context.get("num_tokens") is not None:
        return int(context["num_tokens"])
    return len(prediction.split())


def _target(label: Any) -> float:
    target = float(label)
    if not target > 0:
        raise ValueError(f"target length must be > 0, got {label!r}")
    return target


@register("max_length")
def max_length(prediction: str, label: Any, scale: Optional[float] = None, **context: Any) -> Result:
    """Closeness to a target length: max(0, 1 - |length - target| / scale).

    The label is the target length; `scale` (option) defaults to the target.
    Length counts `num_tokens` from the context when given, else words.

    >>> import rewards
    >>> rewards.score("max_length", "one two three four", 4)
    1.0
    >>> rewards.score("max_length", "one two", 4)
    0.5
    """
    target, n = _target(label), _length(prediction, context)
    value = max(0.0, 1.0 - abs(n - target) / float(scale or target))
    return Result(value, f"length {n}, target {target:g}")


@register("up_to_max_length")
def up_to_max_length(prediction: str, label: Any, scale: Optional[float] = None, **context: Any) -> Result:
    """1 up to the target length, then falling linearly: max(0, 1 - (length - target) / scale).

    >>> import rewards
    >>> rewards.score("up_to_max_length", "short answer", 10)
    1.0
    >>> rewards.score("up_to_max_length", " ".join(["word"] * 15), 10)
    0.5
    """
    target, n = _target(label), _length(prediction, context)
    value = 1.0 if n <= target else max(0.0, 1.0 - (n - target) / float(scale or target))
    return Result(value, f"length {n}, target {target:g}")


_THINK_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<answer>.*)", re.DOTALL)


@register("format", raw=True)
def think_format(prediction: str, label: Any = None, think_in_prompt: bool = False, **context: Any) -> Result:
    """1 if the output is exactly one `<think>...</think>` block followed by a non-empty answer.

    The label is ignored. With `think_in_prompt=True` (a chat template that
    opens `<think>` in the prompt) the output must instead hold exactly one
    `</think>`, no `<think>`, and a non-empty answer after it.

    >>> import rewards
    >>> rewards.score("format", "<think>2+2=4</think>The answer is 4.")
    1.0
    >>> rewards.score("format", "<think>a</think><think>b</think>4")
    0.0
    >>> rewards.score("format", "reasoning...</think>4", think_in_prompt=True)
    1.0
    """
    if think_in_prompt:
        prediction = "<think>" + prediction
    if prediction.count("<think>") != 1 or prediction.count("</think>") != 1:
        return Result(0.0, "needs exactly one <think> and one </think>")
    match = _THINK_FORMAT.fullmatch(prediction)
    if match is None:
        return Result(0.0, "text before <think>")
    if not match.group("answer").strip():
        return Result(0.0, "empty answer after </think>")
    return Result(1.0)
