"""Deterministic pass/fail checks for the constraint a steered response must follow.

Every verifier takes the response text plus keyword parameters and returns a bool.
The rules are written out in each docstring because scores depend on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from langdetect import DetectorFactory, detect
from langdetect.lang_detect_exception import LangDetectException

from steer_eval.sentences import WORD, count_sentences, split_sentences

# langdetect samples n-grams at random; without a fixed seed the same text can get
# different labels on different calls.
DetectorFactory.seed = 0

def count_words(text: str) -> int:
    """Number of ``\\w+`` runs in ``text`` on the ``regex`` engine.

    Same rule as lm-eval's IFEval ``count_words`` (nltk ``RegexpTokenizer(r"\\w+")``, which runs on ``regex``):
    "don't" is 2 words, "well-known" is 2, "3.5" is 2; letters, digits and combining marks are word
    characters, so "cafe\\u0301" (a decomposed "café") and Devanagari "हिन्दी" are one word each;
    punctuation and emoji are not.
    """
    return sum(1 for _ in WORD.finditer(text))


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


def has_sentences(text: str, n: int, lang: str | None = None) -> bool:
    """True when ``text`` has exactly ``n`` sentences by :func:`steer_eval.sentences.split_sentences`.

    ``lang`` is the response's language when the composition asks for one (``scoring.verify`` passes it), so
    "z.B." or "Sr." do not end a German or Spanish sentence; English rules otherwise.
    """
    return count_sentences(text, lang) == n


def _without_code_fence(text: str) -> str:
    """The inside of one markdown fence around the whole text (```` ``` ````, ```` ```json ````), else the text.

    Plain string operations: a regex here backtracked quadratically on long runs of spaces or backticks."""
    if len(text) < 6 or not (text.startswith("```") and text.endswith("```")):
        return text
    inner = text[3:-3]
    info, newline, body = inner.partition("\n")
    if newline and (not info.strip() or info.strip().isalpha()):
        return body.strip()  # "```json\n...```", "``` JSON\n...```"
    return inner.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz").strip()  # "```json{...}```"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def is_json_answer(text: str) -> bool:
    """True when the whole response is a JSON object whose only key is "answer".

    The text is stripped and one surrounding markdown code fence (```` ``` ```` or
    ```` ```json ````) is removed if present; nothing else may surround the JSON.
    The value of "answer" may be any JSON value. Strict RFC 8259: ``NaN``/``Infinity``
    (which Python's json accepts) and an object with a repeated key are not JSON.
    """
    candidate = _without_code_fence(text.strip())
    try:
        parsed = json.loads(candidate, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys)
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
