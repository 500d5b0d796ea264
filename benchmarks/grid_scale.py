"""Bookkeeping of the grid at scale, on the simulate backend (no model: the scheduler, writer, resume and summary
are all that run), and scaling over Ray actors with a fixed per-evaluation delay.

    python benchmarks/grid_scale.py [--sizes 10000 100000 1000000] [--delay 0.01] [--scaling-evaluations 4000]
                                    [--grid-sizes 1000000 10000000]

1. For each size: a grid of k = 1..3 (every order of every compatible combination, steering and text) over enough
   synthetic prompts, run by `runner.run` in a fresh process, in-process and on 2 Ray actors; evaluations/s
   (model start excluded, as the manifest's rate), the driver's peak RSS (VmHWM), output bytes; then a resume of
   the complete file (scan only) and `steer-eval analyze` of it (time, peak RSS).
2. Scaling: the same plan on N = 1, 2, 4 actors with `--delay` seconds per evaluation; rate(N) / (N x rate(1)).
3. The CLI at scale, k = 1..4: `steer-eval grid --backend simulate --model sim --k 1 2 3 4 --control-method
   steering --num-prompts N --data-path FILE` (10,948 evaluations a prompt; FILE: the bundled test prompts repeated,
   numbered, to N), then `steer-eval analyze` of its folder: wall time and
   peak RSS of each, and the summary's bytes per record: analyze's peak RSS less that of analyze on a one-prompt
   grid (the interpreter and its imports), over the records.
`--sizes`, `--grid-sizes` with no value and `--scaling-evaluations 0` leave a part out.
Writes results/bench/grid_scale_<date>.json with the machine and the command, and results/bench/grid_scale.md
(with `--out FILE`: FILE and the table beside it, FILE with the suffix .md).
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
GRID_PER_PROMPT = 10_948  # evaluations per prompt of the k = 1..4 steering grid (18 + 238 + 2052 + 8640)
GRID = ["grid", "--backend", "simulate", "--model", "sim", "--k", "1", "2", "3", "4", "--control-method", "steering"]


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


def _cli(*arguments: str) -> dict:
    """`steer-eval ARGUMENTS` in a fresh process: its wall time and peak RSS."""
    command = [sys.executable, "-c", "import sys, resource; from steer_eval.cli.main import main; code = main(sys.argv[1:]);"
               " print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); sys.exit(code)",
               *arguments]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return {"seconds": round(time.monotonic() - started, 2),
            "peak_rss_mb": round(float(done.stderr.strip().splitlines()[-1]), 1)}


def _analyze(output: Path) -> dict:
    return _cli("analyze", str(output))


def _prompt_file(prompts: int, folder: Path) -> Path:
    """`prompts` prompts: the bundled test split (244) over and over, each copy numbered, so any size can be asked
    for with the bundled prompts' lengths."""
    from steer_eval.scoring.prompts import load_prompts
    bundled = load_prompts()
    path = folder.with_suffix(".prompts.jsonl")
    path.write_text("".join(json.dumps({"id": str(i), "prompt": f"{bundled[i % len(bundled)].prompt} ({i})"}) + "\n"
                            for i in range(prompts)))
    return path


def _grid_row(prompts: int, folder: Path, baseline_mb: float) -> dict:
    grid = _cli(*GRID, "--num-prompts", str(prompts), "--data-path", str(_prompt_file(prompts, folder)),
                "--output-dir", str(folder))
    records = folder / "records.jsonl"
    evaluations = sum(1 for _ in records.open("rb"))
    analyze = _analyze(folder)
    return {"prompts": prompts, "evaluations": evaluations, "output_bytes": records.stat().st_size,
            "grid": grid, "analyze": analyze,
            "summary_bytes_per_record": round((analyze["peak_rss_mb"] - baseline_mb) * 2**20 / evaluations, 1)}


def _grid_rows(sizes: list[int], tmp: str) -> dict:
    baseline_folder = Path(tmp) / "grid-baseline"
    _cli(*GRID, "--num-prompts", "1", "--k", "1", "--output-dir", str(baseline_folder))
    baseline = _analyze(baseline_folder)["peak_rss_mb"]
    rows = []
    for size in sizes:
        folder = Path(tmp) / f"grid-{size}"
        row = {"target": size, **_grid_row(max(1, round(size / GRID_PER_PROMPT)), folder, baseline)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        (folder / "records.jsonl").unlink()
    return {"analyze_baseline_peak_rss_mb": baseline, "rows": rows}


def _markdown(results: dict) -> str:
    lines = ["# Grid and analyze at scale (simulate backend)", "", f"`{results['command']}` on "
             f"{results['machine']['cpus']} CPUs, {results['machine']['platform']}, Python "
             f"{results['machine']['python']}, {results['date']}.", ""]
    cli = results.get("cli")
    if cli:
        lines += ["## `steer-eval grid` (k = 1..4, steering) then `steer-eval analyze` of its folder", "",
                  f"Each row: `{' '.join(['steer-eval', *GRID])} --num-prompts N --data-path FILE --output-dir DIR`, "
                  "then `steer-eval analyze DIR`. Bytes per record = (analyze's peak RSS − "
                  f"{cli['analyze_baseline_peak_rss_mb']} MB, analyze of a one-prompt k = 1 grid) / records.", "",
                  "| evaluations | prompts | records file | grid wall | grid peak RSS | analyze wall | analyze peak RSS "
                  "| summary bytes/record |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['evaluations']:,} | {r['prompts']} | {r['output_bytes'] / 2**30:.2f} GiB | "
                  f"{r['grid']['seconds']:.0f} s | {r['grid']['peak_rss_mb']:.0f} MB | {r['analyze']['seconds']:.0f} s | "
                  f"{r['analyze']['peak_rss_mb']:.0f} MB | {r['summary_bytes_per_record']} |" for r in cli["rows"]]
    if results["bookkeeping"]:
        lines += ["", "## runner.run, k = 1..3, steering and text", "",
                  "| evaluations | actors | evaluations/s | driver peak RSS | analyze wall | analyze peak RSS |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['evaluations']:,} | {r['actors']} | {r['evaluations_per_second']} | "
                  f"{r['driver_peak_rss_mb']} MB | {r['analyze']['seconds']} s | {r['analyze']['peak_rss_mb']} MB |"
                  for r in results["bookkeeping"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--grid-sizes", nargs="*", type=int, default=[1_000_000, 10_000_000],
                        help="evaluations of the k = 1..4 `steer-eval grid` rows")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds per evaluation in the scaling part")
    parser.add_argument("--scaling-evaluations", type=int, default=4000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    command = ["python", "benchmarks/grid_scale.py", *(sys.argv[1:] if argv is None else argv)]
    results = {"command": " ".join(command), "machine": {
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
        if args.grid_sizes:
            results["cli"] = _grid_rows(args.grid_sizes, tmp)
        prompts = max(1, round(args.scaling_evaluations / PER_PROMPT * 1.0)) or 1
        single = None
        for actors in (1, 2, 4) if args.scaling_evaluations else ():
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
    table = ROOT / "results" / "bench" / "grid_scale.md" if args.out is None else out.with_suffix(".md")
    table.write_text(_markdown(results))
    print(f"written to {out} and {table}")


if __name__ == "__main__":
    main()
