"""Deterministic pass/fail checks for the constraint a steered response must follow.

Every verifier takes the response text plus keyword parameters and returns a bool.
The rules are written out in each docstring because scores depend on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from langdetect import DetectorFactory, detect
from langdetect.lang_detect_exception import LangDetectException

# langdetect samples n-grams at random; without a fixed seed the same text can get
# different labels on different calls.
DetectorFactory.seed = 0

_WORD = re.compile(r"\w+")

# A run of sentence-ending marks, optionally followed by closing quotes/brackets,
# that ends a sentence only if whitespace or the end of the line follows it.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’»)\]*_]*(?=\s|$)")
_LIST_OR_HEADING_MARKER = re.compile(r"^\s*(?:#{1,6}|>|[-*+•]|\d{1,3}[.)])(?:\s+|$)")
_ABBREVIATIONS_ANY_CASE = frozenset(
    {
        "dr.", "mr.", "mrs.", "ms.", "prof.", "sr.", "jr.", "vs.", "etc.", "e.g.",
        "i.e.", "a.m.", "p.m.", "u.s.", "approx.", "cf.", "al.",
    }
)
# Only capitalised: "no." and "fig." are ordinary words ending a sentence
# ("I said no. Then ...", "I ate a fig. It ...").
_ABBREVIATIONS_CAPITALISED = frozenset({"No.", "Fig.", "St.", "Inc.", "Ltd."})

_CODE_FENCE = re.compile(r"\A```[A-Za-z]*[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.DOTALL)


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs in ``text``.

    Same rule as lm-eval's IFEval ``count_words`` (nltk ``RegexpTokenizer(r"\\w+")``):
    "don't" is 2 words, "well-known" is 2, "3.5" is 2, letters with accents and
    digits are word characters, punctuation and emoji are not.
    """
    return len(_WORD.findall(text))


def words_in_range(text: str, low: int, high: int) -> bool:
    """True when ``low <= count_words(text) <= high`` (both bounds inclusive)."""
    return low <= count_words(text) <= high


def detect_language(text: str) -> str | None:
    """ISO 639-1 code langdetect assigns to ``text`` (seed fixed at 0).

    Returns None for empty/whitespace-only text or when langdetect cannot decide
    (e.g. text with no letters).
    """
    if not text.strip():
        return None
    try:
        return detect(text)
    except LangDetectException:
        return None


def is_language(text: str, lang: str) -> bool:
    """True when langdetect labels ``text`` as ``lang`` (e.g. "de", "es", "fr").

    Empty text or a detection failure counts as NOT followed. IFEval counts a
    failure as followed; we do not, so a response with no usable text cannot pass.
    """
    return detect_language(text) == lang.strip().lower()


def is_lowercase(text: str) -> bool:
    """True when no letter is uppercase/titlecase and at least one cased letter exists.

    Uses ``str.islower`` so non-ASCII letters count ("é", "ß" lowercase; "É" not).
    Empty text or text without cased letters (digits only, Chinese) is NOT followed.
    """
    return text.islower()


def is_uppercase(text: str) -> bool:
    """True when no letter is lowercase and at least one cased letter exists.

    Uses ``str.isupper``: "ÜBER" passes; "STRAßE" fails because "ß" is lowercase.
    Empty text or text without cased letters is NOT followed.
    """
    return text.isupper()


def _first_alphanumeric(word: str) -> str | None:
    return next((char for char in word if char.isalnum()), None)


def is_title_case(text: str) -> bool:
    """True when every whitespace-separated word starts with an uppercase letter.

    Leading non-alphanumeric characters of a word (quotes, brackets, ``*``, ``#``,
    ``-``, ``_``, ``¿``, ``¡`` ...) are skipped before looking at its first character.
    Refinements: a word starting with a digit ("3rd", "2024") or a caseless letter
    (CJK), and a word with no letters or digits ("-", "&"), is fine. Small words
    get no exception: "The Lord of the Rings" is NOT title case. At least one word
    must start with an uppercase letter, so empty or digits-only text is NOT followed.
    """
    saw_uppercase_start = False
    for word in text.split():
        first = _first_alphanumeric(word)
        if first is None:
            continue
        if first.islower():
            return False
        if first.isupper() or first.istitle():
            saw_uppercase_start = True
    return saw_uppercase_start


def _is_abbreviation(line: str, end: re.Match[str]) -> bool:
    if end.group() != ".":
        return False
    before = line[: end.start()]
    if not before or before[-1].isspace():
        return False
    token = before.rsplit(maxsplit=1)[-1].lstrip("\"'“‘«([*_") + "."
    return token.lower() in _ABBREVIATIONS_ANY_CASE or token in _ABBREVIATIONS_CAPITALISED


def _split_line(line: str) -> list[str]:
    pieces, start = [], 0
    for end in _SENTENCE_END.finditer(line):
        if _is_abbreviation(line, end):
            continue
        pieces.append(line[start : end.end()])
        start = end.end()
    pieces.append(line[start:])
    return [piece.strip() for piece in pieces if _WORD.search(piece)]


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with a rule-based splitter (no nltk download).

    Rules:
    - A run of ``.``, ``!``, ``?`` ("...", "?!"), optionally followed by closing
      quotes or brackets, ends a sentence when whitespace or the end of the text
      follows it. "3.5" and "example.com" do not split (no whitespace after the dot).
    - Every non-empty line is its own segment, so a list item or heading without
      end punctuation is one sentence: "- apples\\n- pears" is 2.
    - A list/heading/quote marker at line start ("-", "*", "+", "•", "1.", "2)",
      "#", ">") is dropped first, so "1. First item" is one sentence.
    - A single "." after a known abbreviation does not split: Dr. Mr. Mrs. Ms.
      Prof. Sr. Jr. vs. etc. e.g. i.e. a.m. p.m. U.S. approx. cf. al. (any case)
      and No. Fig. St. Inc. Ltd. (capitalised only).
    - A segment without any word character (a "---" rule, a lone "```" fence, an
      emoji line) is not a sentence.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        sentences.extend(_split_line(_LIST_OR_HEADING_MARKER.sub("", line, count=1)))
    return sentences


def count_sentences(text: str) -> int:
    """Number of sentences by the rules of :func:`split_sentences`; 0 for empty text."""
    return len(split_sentences(text))


def has_sentences(text: str, n: int) -> bool:
    """True when ``text`` has exactly ``n`` sentences (see :func:`split_sentences`)."""
    return count_sentences(text) == n


def is_json_answer(text: str) -> bool:
    """True when the whole response is a JSON object whose only key is "answer".

    The text is stripped and one surrounding markdown code fence (```` ``` ```` or
    ```` ```json ````) is removed if present; nothing else may surround the JSON.
    The value of "answer" may be any JSON value.
    """
    candidate = text.strip()
    fenced = _CODE_FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        parsed = json.loads(candidate)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and list(parsed) == ["answer"]


VERIFIERS: dict[str, Callable[..., bool]] = {
    "words_in_range": words_in_range,
    "is_language": is_language,
    "is_lowercase": is_lowercase,
    "is_uppercase": is_uppercase,
    "is_title_case": is_title_case,
    "has_sentences": has_sentences,
    "is_json_answer": is_json_answer,
}


def run_verifier(name: str, text: str, params: Mapping[str, Any] | None = None) -> bool:
    """Run the verifier called ``name`` on ``text`` with keyword ``params``.

    Raises ValueError for an unknown name, listing the known verifiers.
    """
    verifier = VERIFIERS.get(name)
    if verifier is None:
        raise ValueError(f"unknown verifier {name!r}; known verifiers: {', '.join(sorted(VERIFIERS))}")
    return verifier(text, **(params or {}))
