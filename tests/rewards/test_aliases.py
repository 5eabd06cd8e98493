"""open-instruct's verifier names (rewards/aliases.py) and specs whose entries carry their own labels, summed."""

from __future__ import annotations

import doctest

import pytest

import rewards
from rewards import aliases
from rewards.aliases import ALIASES, resolve
from rewards.core import labelled_parts, parse_spec, spec_parts
from rewards.workers import tasks_from


def test_doctests():
    assert doctest.testmod(aliases).failed == 0


def test_every_alias_names_a_registered_verifier():
    assert set(ALIASES.values()) <= set(rewards.names())
    assert {"string_matcher", "ifeval_old", "general-quality", "general-refusal"} <= set(ALIASES)
    assert not {"flan", "puzzle", "re_search", "re_search_f1"} & set(ALIASES)  # no verifier here for those


@pytest.mark.parametrize("name, expected", [
    ("math", "math"), ("MATH", "math"), ("string_matcher", "string_match"), ("ifeval_old", "ifeval"),
    ("general-quality_ref", "llm_judge"), ("general-web_instruct_general_verifier", "llm_judge"),
    ("code_stdio", "code_stdio"), ("format", "format"), ("puzzle", "puzzle"),
])
def test_resolve(name, expected):
    assert resolve(name) == expected


def test_the_recipe_aliases_win_over_the_table_and_add_names():
    extra = {"general-quality": "string_f1", "Puzzle": "string_match"}
    assert resolve("General-Quality", extra) == "string_f1"
    assert resolve("puzzle", extra) == "string_match"
    assert resolve("general-safety", extra) == "llm_judge"


# --------------------------------------------------------------------------- labelled specs

TWO = [{"name": "gsm8k", "label": "4"}, {"name": "string_match", "label": "four", "weight": 2}]


def test_labelled_specs_parse_to_names_and_weights():
    assert parse_spec(TWO) == (("gsm8k", 1.0), ("string_match", 2.0))
    assert labelled_parts(TWO) == (("gsm8k", 1.0, "4"), ("string_match", 2.0, "four"))
    assert labelled_parts(["math", "format"]) == () and labelled_parts({"math": 1}) == ()


@pytest.mark.parametrize("spec, problem", [
    ([{"name": "math", "label": "1"}, "format"], "cannot be mixed"),
    ([{"name": "math", "labels": "1"}], "unknown key"),
    ([{"label": "1"}], r"verifier\[0\].name"),
    ([{"name": "math", "label": "1", "weight": -1}], "must be finite and >= 0"),
])
def test_malformed_labelled_specs_raise(spec, problem):
    with pytest.raises(ValueError, match=problem):
        spec_parts(spec)


def test_unknown_names_in_labelled_specs_are_named():
    with pytest.raises(rewards.UnknownNameError, match="item 0: unknown verifier 'puzzle'"):
        tasks_from([{"verifier": [{"name": "puzzle", "label": "x"}, {"name": "math", "label": "1"}], "prediction": "1"}])


def test_labelled_specs_sum_each_verifier_with_its_own_label():
    """gsm8k against "4" scores 1 and string_match against "four" scores 0 on "4": 1*1 + 2*0 = 1; on "four"
    gsm8k finds no number (0) and string_match matches (2*1): 2. Both right with weights 1: 2, above 1."""
    assert rewards.evaluate(TWO, "4").score == 1.0
    assert rewards.evaluate(TWO, "four").score == 2.0
    both = [{"name": "gsm8k", "label": "4"}, {"name": "string_match", "label": "4"}]
    items = [{"verifier": both, "prediction": p, "label": None} for p in ("4", "5")]
    assert [r.score for r in rewards.score_batch(items, max_workers=0)] == [2.0, 0.0]


def test_other_specs_keep_the_weighted_mean_in_zero_one():
    assert rewards.evaluate(["gsm8k", "string_match"], "4", "4").score == 1.0
    assert rewards.evaluate({"gsm8k": 3, "string_match": 1}, "four", "4").score == 0.0
    assert rewards.evaluate([["gsm8k", 1], ["string_match", 3]], "The answer is 4", "4").score == 0.25
