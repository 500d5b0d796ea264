"""Inputs that make verifiers slow if anything in them backtracks, and the timing of a verdict on them: the
verifiers' linear-time promise, held by tests/test_verifier_speed.py and measured by benchmarks/verifier_speed.py.

The shapes are those that made regular expressions backtrack (long runs of spaces, dots, backticks, brackets) and
the ones a degenerate generation produces (one word or one abbreviation repeated, empty lines)."""
from __future__ import annotations

import time

from steer_eval.scoring.behaviors import BEHAVIORS
from steer_eval.scoring.verdict import verify


def adversarial_inputs(size: int = 1_000_000) -> dict[str, str]:
    def repeat(unit: str) -> str:
        return unit * (size // len(unit))

    prose = ("Der Zug fährt um 3 Uhr ab, z.B. nach Berlin. Am 3. Oktober ist Feiertag! Wirklich? "
             "Dr. Smith said, \"Why?\" and left... Then the U.S. team won, etc. ")
    return {
        "spaces": repeat(" "), "dots": repeat(".") + "x", "dots_spaced": repeat(". "), "letter_dots": repeat("a. "),
        "backticks": repeat("`"), "fence_then_spaces": "```" + repeat(" ") + "x", "json_fence_spaces": "```json\n" + repeat(" "),
        "open_brackets": repeat("["), "open_braces": repeat("{"), "json_nested": '{"answer": ' + repeat("["),
        "marks": repeat("?!"), "abbreviations": repeat("Dr. "), "ordinals": repeat("3. "), "ellipses": repeat("... "),
        "quotes": repeat('"Why?" '), "french_spacing": repeat("Pourquoi ? » "), "empty_lines": repeat("\n"),
        "list_markers": repeat("- "), "full_width_stops": repeat("。"), "one_word": repeat("hello "),
        "no_spaces": repeat("x"), "unique_tokens": " ".join(f"w{i}." for i in range(size // 8)),
        "multilingual_prose": repeat(prose), "uppercase_prose": repeat(prose.upper()),
    }


def compositions() -> list[list[str]]:
    return [[behavior] for behavior in BEHAVIORS] + [["german", "sentences_3"]]


def slowest_call(text: str, repeat: int) -> tuple[float, str]:
    """The slowest composition's best-of-`repeat` time on `text`."""
    return max((best_time(behaviors, text, repeat), "+".join(behaviors)) for behaviors in compositions())


def best_time(behaviors, text: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        verify(behaviors, text)
        times.append(time.perf_counter() - start)
    return min(times)
