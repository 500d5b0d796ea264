"""Every verifier on 1 MB adversarial inputs: the slowest call per input, to show time stays linear.

    python benchmarks/verifier_speed.py [--size 1000000] [--repeat 3]

Inputs are the shapes that made regular expressions backtrack (long runs of spaces, dots, backticks, brackets)
and the ones a degenerate generation produces (one word or one abbreviation repeated, empty lines). Each
behaviour of the registry is judged alone, and `sentences_3` also inside a German composition (German rules).
Writes results/bench/verifier_speed.json with the machine and the command; tests/test_verifier_speed.py checks
that the slowest call grows linearly with the input (a quarter megabyte against a megabyte).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    from steer_eval.scoring.behaviors import BEHAVIORS
    return [[behavior] for behavior in BEHAVIORS] + [["german", "sentences_3"]]


def slowest_call(text: str, repeat: int) -> tuple[float, str]:
    """The slowest composition's best-of-`repeat` time on `text`."""
    return max((best_time(behaviors, text, repeat), "+".join(behaviors)) for behaviors in compositions())


def best_time(behaviors, text: str, repeat: int) -> float:
    from steer_eval.scoring.verdict import verify
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        verify(behaviors, text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for name, text in adversarial_inputs(args.size).items():
        seconds, behaviors = slowest_call(text, args.repeat)
        rows[name] = {"characters": len(text), "slowest_seconds": round(seconds, 4), "slowest_behaviors": behaviors}
        print(f"{name:<20} {len(text):>9} chars  slowest {seconds:.3f} s ({behaviors})", flush=True)
    out = ROOT / "results" / "bench" / "verifier_speed.json"
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "machine": {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"), "inputs": rows}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
