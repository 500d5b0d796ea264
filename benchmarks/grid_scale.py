"""Bookkeeping of the grid at scale, on the simulate backend (no model: the scheduler, writer, resume and summary
are all that run), and scaling over Ray actors with a fixed per-evaluation delay.

    python benchmarks/grid_scale.py [--sizes 10000 100000 1000000] [--delay 0.01] [--scaling-evaluations 4000]

1. For each size: a grid of k = 1..3 (every order of every compatible combination, steering and text) over enough
   synthetic prompts, run by `runner.run` in a fresh process, in-process and on 2 Ray actors; evaluations/s
   (model start excluded, as the manifest's rate), the driver's peak RSS (VmHWM), output bytes; then a resume of
   the complete file (scan only) and `steer-eval analyze` of it (time, peak RSS).
2. Scaling: the same plan on N = 1, 2, 4 actors with `--delay` seconds per evaluation; rate(N) / (N x rate(1)).
Writes results/bench/grid_scale_<date>.json with the machine and the command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_PROMPT = 4616  # evaluations per prompt of the k = 1..3 steering+text grid (18 + 238 + 2052, times 2 methods)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One run in this process; prints a JSON line (peak RSS is this process's own: the driver's)."""
    from steer_eval.runs.backend_spec import BackendSpec
    from steer_eval.backends.generation import GenerationConfig
    from steer_eval.runs.grid import build_grid
    from steer_eval.scoring.prompts import Prompt
    from steer_eval.runs.identity import read_throughput
    from steer_eval.runs.runner import run

    prompts = [Prompt(f"p{i:05d}", f"Synthetic prompt number {i}: explain something in a few sentences.")
               for i in range(args.prompts)]
    plan = build_grid(prompts, [1, 2, 3], ["steering", "text"], ["composition"])
    output = Path(args.output)
    started = time.monotonic()
    result = run(plan, BackendSpec("simulate", "simulated", options={"delay": args.delay}), GenerationConfig(),
                 output, actors=args.actors, chunk_size=args.chunk_size, progress=False)
    wall = time.monotonic() - started
    rate = read_throughput(output) if result.evaluated else None
    print(json.dumps({"evaluations": result.planned, "evaluated": result.evaluated, "wall_seconds": round(wall, 2),
                      "run_seconds": rate and rate["seconds"],
                      "evaluations_per_second": rate and round(rate["evaluations"] / rate["seconds"]),
                      "driver_peak_rss_mb": round(_peak_rss_mb(), 1), "output_bytes": output.stat().st_size}))


def _child(prompts: int, actors: int, output: Path, delay: float = 0.0, chunk_size: int = 1024) -> dict:
    command = [sys.executable, __file__, "--child", "--prompts", str(prompts), "--actors", str(actors),
               "--output", str(output), "--delay", str(delay), "--chunk-size", str(chunk_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _analyze(output: Path) -> dict:
    command = [sys.executable, "-c", "import sys, resource; from steer_eval.cli.main import main; code = main(sys.argv[1:]);"
               " print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); sys.exit(code)",
               "analyze", str(output)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return {"seconds": round(time.monotonic() - started, 2),
            "peak_rss_mb": round(float(done.stderr.strip().splitlines()[-1]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per evaluation in the scaling part")
    parser.add_argument("--scaling-evaluations", type=int, default=4000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": datetime.date.today().isoformat(), "bookkeeping": [], "scaling": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            prompts = max(1, round(size / PER_PROMPT))
            for actors in (0, 2):
                output = Path(tmp) / f"{size}-{actors}" / "records.jsonl"
                row = {"target": size, "actors": actors, **_child(prompts, actors, output)}
                row["resume_complete"] = _child(prompts, actors, output)  # nothing to run: scan only
                row["analyze"] = _analyze(output)
                row["bytes_per_million"] = round(row["output_bytes"] / row["evaluations"] * 1e6)
                print(json.dumps(row), flush=True)
                results["bookkeeping"].append(row)
                output.unlink()
        prompts = max(1, round(args.scaling_evaluations / PER_PROMPT * 1.0)) or 1
        single = None
        for actors in (1, 2, 4):
            output = Path(tmp) / f"scaling-{actors}" / "records.jsonl"
            row = _child(prompts, actors, output, delay=args.delay, chunk_size=16)
            single = single or row["evaluations_per_second"]
            row["speedup_over_one"] = round(row["evaluations_per_second"] / single, 3)
            row["efficiency"] = round(row["speedup_over_one"] / actors, 3)
            print(json.dumps({"actors": actors, **row}), flush=True)
            results["scaling"][str(actors)] = row
    results["scaling"]["delay_seconds"] = args.delay
    out = Path(args.out or ROOT / "results" / "bench" / f"grid_scale_{results['date']}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
