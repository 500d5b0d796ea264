"""Deterministic quality measures of one response: cheap enough for every record of a million-evaluation grid.

A verifier says *German*; these say whether it is German or the same five words forty times: distinct-n (share of
distinct word n-grams), the share of the response covered by its longest repeated word n-gram, the length in
model tokens and whether generation stopped at the token limit rather than by itself.
"""
from __future__ import annotations

from typing import Callable

from steer_eval.scoring.sentences import WORD

_MODULUS = (1 << 61) - 1
_BASE = 1_000_003


def words(text: str) -> list[str]:
    """Lowercased ``\\w+`` runs (the word rule of the length verifiers)."""
    return [match.group().lower() for match in WORD.finditer(text)]


def distinct_n(tokens: list[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams (1.0: no n-gram repeats); None when the text has fewer than n words."""
    total = len(tokens) - n + 1
    if total <= 0:
        return None
    return len({tuple(tokens[i:i + n]) for i in range(total)}) / total


def _repeated_at(ids: list[int], length: int) -> int | None:
    """Start of an n-gram of `length` ids that occurs twice, by rolling hash (checked on the ids), else None."""
    if length == 0:
        return 0
    power = pow(_BASE, length, _MODULUS)
    value, first_at = 0, {}
    for end, token in enumerate(ids, start=1):
        value = (value * _BASE + token) % _MODULUS
        if end > length:
            value = (value - ids[end - length - 1] * power) % _MODULUS
        if end >= length:
            start = end - length
            earlier = first_at.setdefault(value, start)
            if earlier != start and ids[earlier:earlier + length] == ids[start:end]:
                return earlier
    return None


def repetition(tokens: list[str]) -> float:
    """Share of the words covered by every occurrence of the longest word n-gram that occurs at least twice.

    0.0 when no word repeats; near 1.0 for a response that is one phrase over and over ("la cidade de la
    cidade de ..."). Occurrences may overlap. O(n log n): binary search on the length, rolling hashes per length.
    """
    if len(tokens) < 2:
        return 0.0
    vocabulary: dict[str, int] = {}
    ids = [vocabulary.setdefault(token, len(vocabulary)) for token in tokens]
    if len(vocabulary) == len(ids):
        return 0.0
    low, high = 1, len(ids) - 1  # a repeat of length `low` exists; none longer than `high`
    while low < high:
        middle = (low + high + 1) // 2
        if _repeated_at(ids, middle) is None:
            high = middle - 1
        else:
            low = middle
    pattern = ids[_repeated_at(ids, low):][:low]
    covered = [False] * len(ids)
    for start in range(len(ids) - low + 1):
        if ids[start] == pattern[0] and ids[start:start + low] == pattern:
            covered[start:start + low] = [True] * low
    return sum(covered) / len(ids)


def measure(text: str, count_tokens: Callable[[str], int] | None = None, max_new_tokens: int | None = None) -> dict:
    """The quality fields a record carries: distinct-1/2, repetition, words, tokens and hit_limit (when known)."""
    tokens = words(text)
    quality = {"words": len(tokens), "distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
               "repetition": round(repetition(tokens), 4)}
    for key in ("distinct_1", "distinct_2"):
        if quality[key] is not None:
            quality[key] = round(quality[key], 4)
    if count_tokens is not None:
        quality["tokens"] = count_tokens(text)
        if max_new_tokens:
            # A response of max_new_tokens tokens was cut by the limit (EOS ends one earlier and is not part of it).
            quality["hit_limit"] = quality["tokens"] >= max_new_tokens
    return quality
