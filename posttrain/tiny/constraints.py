"""Instruction-following constraints of the toy domain, in IFEval's label format.

Each constraint is one instruction from Google's IFEval set that a
few-million-parameter model can learn to follow: its official instruction id,
its kwargs, a few phrasings for the prompt, a one-line note for the think
block, and the text transform that satisfies it. A response follows a set of
constraints when the transforms are applied in `ORDER` (content edits first,
then the title, then letter case, then the quotes around everything), which
keeps every combination we sample satisfiable at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from posttrain.tiny.lexicon import END_PHRASES


@dataclass(frozen=True)
class Constraint:
    """One IFEval instruction, with what it takes to follow it."""

    instruction_id: str                      # official IFEval id, e.g. "change_case:english_lowercase"
    phrase: str                              # the instruction as written in the prompt
    note: str                                # what the think block says about it
    apply: Callable[[str, str], str]         # (response, title) -> response that follows it
    kwargs: dict = field(default_factory=dict)  # IFEval kwargs for the verifier


def _no_comma(text: str, title: str) -> str:
    return text.replace(", and ", " and ").replace(", ", " ").replace(",", "")


def _title(text: str, title: str) -> str:
    return f"<<{title}>> {text}"


def _quote(text: str, title: str) -> str:
    return f'"{text}"'


def _lower(text: str, title: str) -> str:
    return text.lower()


def _upper(text: str, title: str) -> str:
    return text.upper()


def _end_with(phrase: str) -> Callable[[str, str], str]:
    return lambda text, title: f"{text} {phrase}"


_PHRASES = {
    "change_case:english_lowercase": (
        "Your entire response should be in English, and in all lowercase letters.",
        "Use only lowercase letters in your answer.",
        "Write everything in lowercase.",
    ),
    "change_case:english_capital": (
        "Your entire response should be in English, and in all capital letters.",
        "Answer in all capital letters.",
        "Write everything in uppercase.",
    ),
    "startend:quotation": (
        "Wrap your entire response with double quotation marks.",
        "Put your whole answer inside double quotes.",
    ),
    "punctuation:no_comma": (
        "In your entire response, refrain from the use of any commas.",
        "Do not use any commas in your answer.",
    ),
    "detectable_format:title": (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        "Give your answer a title in double angular brackets, like <<my title>>.",
    ),
    "startend:end_checker": (
        'Finish your response with this exact phrase "{end_phrase}". No other words should follow this phrase.',
        'End your answer with the exact phrase "{end_phrase}".',
    ),
}

_NOTES = {
    "change_case:english_lowercase": "I must write only lowercase letters.",
    "change_case:english_capital": "I must write only capital letters.",
    "startend:quotation": "I must wrap the whole answer in double quotes.",
    "punctuation:no_comma": "I must not use any commas.",
    "detectable_format:title": "I must start with a title in double angular brackets.",
    "startend:end_checker": 'I must end with the phrase "{end_phrase}".',
}

_TRANSFORMS = {
    "change_case:english_lowercase": _lower,
    "change_case:english_capital": _upper,
    "startend:quotation": _quote,
    "punctuation:no_comma": _no_comma,
    "detectable_format:title": _title,
}

# order in which transforms apply, so that any sampled combination holds at once
ORDER = (
    "punctuation:no_comma",
    "startend:end_checker",
    "detectable_format:title",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "startend:quotation",
)
INSTRUCTION_IDS = ORDER

# pairs that cannot hold together (or that the content cannot satisfy)
CONFLICTS = frozenset({frozenset({"change_case:english_lowercase", "change_case:english_capital"})})


def _simple(instruction_id: str) -> Callable[[random.Random], Constraint]:
    def factory(rng: random.Random) -> Constraint:
        phrase = rng.choice(_PHRASES[instruction_id])
        return Constraint(instruction_id, phrase, _NOTES[instruction_id], _TRANSFORMS[instruction_id])

    return factory


def _end_checker(rng: random.Random) -> Constraint:
    instruction_id = "startend:end_checker"
    phrase = rng.choice(_PHRASES[instruction_id])
    end_phrase = rng.choice(END_PHRASES)
    return Constraint(
        instruction_id,
        phrase.format(end_phrase=end_phrase),
        _NOTES[instruction_id].format(end_phrase=end_phrase),
        _end_with(end_phrase),
        {"end_phrase": end_phrase},
    )


_FACTORIES: dict[str, Callable[[random.Random], Constraint]] = {
    **{instruction_id: _simple(instruction_id) for instruction_id in _TRANSFORMS},
    "startend:end_checker": _end_checker,
}


def make(instruction_id: str, rng: random.Random) -> Constraint:
    """A constraint with a sampled phrasing (and end phrase, for end_checker)."""
    if instruction_id not in _FACTORIES:
        raise KeyError(f"unknown toy instruction {instruction_id!r}; known: {', '.join(ORDER)}")
    return _FACTORIES[instruction_id](rng)


def sample_ids(rng: random.Random, count: int) -> list[str]:
    """`count` distinct, mutually compatible instruction ids, in application order."""
    while True:
        ids = rng.sample(ORDER, count)
        if not any(frozenset(pair) in CONFLICTS for pair in _pairs(ids)):
            return sorted(ids, key=ORDER.index)


def _pairs(ids: list[str]):
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]


def follow(text: str, title: str, constraints: list[Constraint]) -> str:
    """`text` edited to satisfy every constraint in `constraints` (given in `ORDER`)."""
    for constraint in sorted(constraints, key=lambda c: ORDER.index(c.instruction_id)):
        text = constraint.apply(text, title)
    return text


def label(constraints: list[Constraint]) -> dict:
    """The IFEval label: {"instruction_id_list": [...], "kwargs": [...]}."""
    return {
        "instruction_id_list": [c.instruction_id for c in constraints],
        "kwargs": [dict(c.kwargs) for c in constraints],
    }
