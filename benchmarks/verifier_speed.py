"""Every verifier on 1 MB adversarial inputs: the slowest call per input, to show time stays linear.

    python benchmarks/verifier_speed.py [--size 1000000] [--repeat 3]

The inputs are steer_eval/scoring/stress.py's (shapes that made regular expressions backtrack, and what a
degenerate generation produces). Each behaviour of the registry is judged alone, and `sentences_3` also inside a German composition (German rules).
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

from steer_eval.scoring.stress import adversarial_inputs, slowest_call

ROOT = Path(__file__).resolve().parents[1]


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
