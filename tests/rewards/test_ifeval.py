"""rewards.ifeval: every instruction type, followed and not, with the official strict semantics."""

from __future__ import annotations

import json

import pytest

import rewards
from rewards import ifeval, ifeval_text

ENGLISH = "The weather today is quite pleasant and the children are playing outside in the park."
FRENCH = "Le temps est très agréable aujourd'hui et les enfants jouent dehors dans le parc."

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "pie"]}, "I love Apple pie.", "I love apple tart."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat Cat CAT", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat, cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "evil"]}, "a badge is fine", "that is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zig zag", "zig"),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "a b", "banana"),
    ("language:response_language", {"language": "fr"}, FRENCH, ENGLISH),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Dr. Smith came home.", "One. Two. Three."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "One. Two. Three.", "Mr. Brown met Dr. Who."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First.\n***\n***\nSecond."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "it's a well-known fact", "two words"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "two words", "three words here"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First part.\n\n\"Then, the rest.", "First part.\n\nNow the rest."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. more", "Hi.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nbody", "Section 1\nall in one"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Poem>>\nroses", "<< >> roses"),
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Here it is.", "Here is a poem."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. Any other questions?"', "Any other questions? Bye."),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "I CANNOT go", "I can NOT go"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE word", "DON'T"),
    ("change_case:english_capital", {}, ENGLISH.upper(), ENGLISH),
    ("change_case:english_lowercase", {}, ENGLISH.lower(), ENGLISH),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
    ("startend:quotation", {}, '  "quoted"  ', '"unbalanced'),
]


def test_all_25_instruction_types_are_covered():
    assert len(ifeval.CHECKS) == 25
    assert {c[0] for c in CASES} == set(ifeval.CHECKS.names())


@pytest.mark.parametrize("instruction, kwargs, good, bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_followed_and_not_followed(instruction, kwargs, good, bad):
    label = {"instruction_id_list": [instruction], "kwargs": [kwargs]}
    assert rewards.score("ifeval", good, label) == 1.0
    assert rewards.score("ifeval", bad, label) == 0.0
    assert rewards.score("ifeval", "   ", label) == 0.0  # strict: an empty response follows nothing


def test_score_is_fraction_followed_and_label_may_be_json_text():
    label = {"instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "startend:quotation"],
             "kwargs": [{}, {}, {}]}
    result = rewards.evaluate("ifeval", "<think>a, b</think><<T>> x, y", json.dumps(label))
    assert result.score == pytest.approx(1 / 3)
    assert "punctuation:no_comma" in result.reason and "startend:quotation" in result.reason


def test_null_kwargs_from_hub_copies_are_ignored():
    kwargs = {"num_highlights": None, "relation": None, "keywords": ["x"], "language": None}
    assert rewards.score("ifeval", "x marks", {"instruction_id_list": ["keywords:existence"], "kwargs": [kwargs]}) == 1.0


def test_undecidable_language_counts_as_followed():
    label = {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "de"}]}
    assert rewards.score("ifeval", "12345 !!!", label) == 1.0


@pytest.mark.parametrize(
    "label",
    [
        {"instruction_id_list": ["no:such_instruction"], "kwargs": [{}]},
        {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]},
        {"instruction_id_list": ["keywords:existence"], "kwargs": [{"words": ["x"]}]},
        {"instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "a", "frequency": 1, "relation": "at most"}]},
        {"kwargs": []},
        "not json",
        None,
    ],
)
def test_malformed_labels_are_unscored_not_raised(label):
    result = rewards.evaluate("ifeval", "some answer", label)
    assert result.score == 0.0 and not result.scored


def test_keywords_are_literal():
    label = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["C++"]}]}
    assert rewards.score("ifeval", "I write C++ daily", label) == 1.0
    assert rewards.score("ifeval", "I write CCC daily", label) == 0.0


def test_text_measures():
    assert ifeval_text.count_words("It's a well-known fact: 3 dogs.") == 8
    assert ifeval_text.count_sentences("Dr. Smith went home. He was tired. It is 3.5 p.m. now!") == 3
    # Treebank splits clitics and fused words: DON'T -> DO N'T, CANNOT -> CAN NOT, JOHN'S -> JOHN 'S
    assert ifeval_text.count_capital_words("DON'T say CANNOT to JOHN'S dog") == 6
    assert ifeval_text.count_capital_words("'TIS A-OK, U.S.A.") == 3
