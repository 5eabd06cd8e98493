"""IFEval: the 25 verifiable instruction types, with the official strict semantics.

The label is `{"instruction_id_list": [...], "kwargs": [{...}, ...]}` as in
Google's IFEval data (a JSON string is accepted too). Each instruction is
checked on the answer text; the score is the fraction followed. As in the
official strict evaluation, an empty response follows nothing, and a
language that `langdetect` cannot decide counts as followed. Keyword
arguments that are null are dropped (the Hugging Face copy of the data pads
every kwargs dict with nulls); any other unexpected argument is a label error.

Where the official checker uses a keyword as a regular expression, this one
matches it literally (identical for words; the official code crashes on
keywords such as "C++").
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from typing import Any, Callable

from rewards.registry import Registry
from rewards.core import Result, register
from rewards import ifeval_text as tx

Check = Callable[..., bool]
CHECKS: Registry[Check] = Registry("IFEval instruction")
_RELATIONS = ("less than", "at least")


def check(instruction_id: str):
    return CHECKS.register(instruction_id)


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation not in _RELATIONS:
        raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")
    return count < threshold if relation == "less than" else count >= threshold


def _pattern(word: str) -> str:
    return re.escape(word.strip())


# -- keywords ---------------------------------------------------------------


@check("keywords:existence")
def keywords_existence(text: str, *, keywords: list[str]) -> bool:
    return all(re.search(_pattern(k), text, re.IGNORECASE) for k in keywords)


@check("keywords:frequency")
def keywords_frequency(text: str, *, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(_pattern(keyword), text, re.IGNORECASE)), relation, frequency)


@check("keywords:forbidden_words")
def keywords_forbidden(text: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + _pattern(w) + r"\b", text, re.IGNORECASE) for w in forbidden_words)


@check("keywords:letter_frequency")
def letter_frequency(text: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    letter = letter.strip().lower()
    if len(letter) != 1:
        raise ValueError(f"letter must be one character, got {letter!r}")
    return _compare(Counter(text.lower())[letter], let_relation, let_frequency)


# -- language and case --------------------------------------------------------


def _in_language(text: str, language: str) -> bool:
    found = tx.detect_language(text)
    return found is None or found == language  # undecidable counts as followed, as upstream


@check("language:response_language")
def response_language(text: str, *, language: str) -> bool:
    return _in_language(text, language)


@check("change_case:english_capital")
def english_capital(text: str) -> bool:
    return text.isupper() and _in_language(text, "en")


@check("change_case:english_lowercase")
def english_lowercase(text: str) -> bool:
    return text.islower() and _in_language(text, "en")


@check("change_case:capital_word_frequency")
def capital_word_frequency(text: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(tx.count_capital_words(text), capital_relation, capital_frequency)


# -- length -------------------------------------------------------------------


@check("length_constraints:number_sentences")
def number_sentences(text: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(tx.count_sentences(text), relation, num_sentences)


@check("length_constraints:number_words")
def number_words(text: str, *, num_words: int, relation: str) -> bool:
    return _compare(tx.count_words(text), relation, num_words)


@check("length_constraints:number_paragraphs")
def number_paragraphs(text: str, *, num_paragraphs: int) -> bool:
    """Paragraphs are separated by `***`; an empty paragraph is allowed only at either end."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


@check("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(text: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs split on blank lines ("\\n\\n"); the nth must start with `first_word`."""
    parts = text.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    if nth_paragraph > count or nth_paragraph < 1:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = re.match(r"[^.,?!'\"]*", word).group(0).lower()
    return count == num_paragraphs and first == first_word.lower()


# -- detectable content and format --------------------------------------------


@check("detectable_content:number_placeholders")
def number_placeholders(text: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", text)) >= num_placeholders


@check("detectable_content:postscript")
def postscript(text: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    patterns = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}
    pattern = patterns.get(marker, r"\s*" + re.escape(marker.lower()) + r".*$")
    return bool(re.findall(pattern, text.lower(), re.MULTILINE))


@check("detectable_format:number_bullet_lists")
def number_bullet_lists(text: str, *, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", text, re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


@check("detectable_format:constrained_response")
def constrained_response(text: str) -> bool:
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(option in text.strip() for option in options)


@check("detectable_format:number_highlighted_sections")
def number_highlighted_sections(text: str, *, num_highlights: int) -> bool:
    """`*x*` and `**x**` spans with non-blank content each count (a `**x**` counts twice, as upstream)."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


@check("detectable_format:multiple_sections")
def multiple_sections(text: str, *, section_spliter: str, num_sections: int) -> bool:
    parts = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", text)
    return len(parts) - 1 >= num_sections


@check("detectable_format:json_format")
def json_format(text: str) -> bool:
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


@check("detectable_format:title")
def title(text: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


# -- combination, start/end, punctuation ---------------------------------------


@check("combination:two_responses")
def two_responses(text: str) -> bool:
    parts = text.split("******")
    kept = []
    for index, part in enumerate(parts):
        if part.strip():
            kept.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0] != kept[1]


@check("combination:repeat_prompt")
def repeat_prompt(text: str, *, prompt_to_repeat: str) -> bool:
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


@check("startend:end_checker")
def end_checker(text: str, *, end_phrase: str) -> bool:
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@check("startend:quotation")
def quotation(text: str) -> bool:
    text = text.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@check("punctuation:no_comma")
def no_comma(text: str) -> bool:
    return "," not in text


# -- the verifier --------------------------------------------------------------


def follows(instruction_id: str, text: str, kwargs: dict | None) -> bool:
    """Whether `text` follows one instruction (strict: an empty text follows nothing)."""
    fn = CHECKS.get(instruction_id)
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    try:
        return bool(text.strip()) and bool(fn(text, **args))
    except TypeError as err:
        raise ValueError(f"{instruction_id}: bad kwargs {sorted(args)}: {err}") from None


def constraint_label(label: Any) -> dict:
    """An IFEval label as `{"instruction_id_list": [...], "kwargs": [...]}`.

    Also read as released: open-instruct's key `instruction_id`, a one-element
    list around the mapping, and Python-literal text (`ast.literal_eval`, which
    evaluates literals only) where the text is not JSON.
    """
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError:
            try:
                label = ast.literal_eval(label)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"label is text but neither JSON nor a Python literal: {err}") from None
    if isinstance(label, (list, tuple)) and len(label) == 1:
        label = label[0]
    if isinstance(label, dict) and "instruction_id_list" not in label and "instruction_id" in label:
        label = {**label, "instruction_id_list": label["instruction_id"]}
    if not isinstance(label, dict) or "instruction_id_list" not in label:
        raise ValueError("label must be {'instruction_id_list': [...], 'kwargs': [...]} (or open-instruct's 'instruction_id')")
    return label


@register("ifeval")
def ifeval(prediction: str, label: Any, **context: Any) -> Result:
    """Fraction of the label's IFEval instructions that the answer follows.

    >>> import rewards
    >>> label = {"instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
    ...          "kwargs": [{}, {}]}
    >>> rewards.score("ifeval", "<<Ode>> Roses are red and so are you", label)
    1.0
    >>> rewards.score("ifeval", "Roses are red, violets are blue", label)
    0.0
    >>> rewards.score("ifeval", "<<Ode>> red, blue", label)
    0.5
    """
    label = constraint_label(label)
    ids = label["instruction_id_list"]
    kwargs = label.get("kwargs") or [{}] * len(ids)
    if not ids or len(kwargs) != len(ids):
        raise ValueError(f"label has {len(ids)} instructions and {len(kwargs)} kwargs")
    followed = [follows(i, prediction, k) for i, k in zip(ids, kwargs)]
    missed = [i for i, ok in zip(ids, followed) if not ok]
    return Result(sum(followed) / len(ids), f"not followed: {', '.join(missed)}" if missed else "")
