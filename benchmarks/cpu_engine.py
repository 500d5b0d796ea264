"""vLLM-CPU engine settings: start time and decode speed of dtype {bfloat16, float32} x {eager, torch.compile}.

    python benchmarks/cpu_engine.py [--prompts 64] [--tokens 64]

Each setting runs in a fresh process (one engine at a time, as a user's run has): the steer-eval vLLM backend on
the default model with that dtype and enforce_eager, started and timed, then `--prompts` plain prompts generate
exactly `--tokens` tokens each (EOS ignored, greedy). The choice it informs: `cpu_engine_defaults` in
steer_eval/backends/vllm.py. Writes results/bench/cpu_engine_<date>.json with the machine and the command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [("bfloat16", True), ("float32", True), ("float32", False), ("bfloat16", False)]


def measure(dtype: str, eager: bool, prompts: int, tokens: int) -> dict:
    from vllm import SamplingParams

    from steer_eval.backends.vllm import VLLMBackend
    started = time.perf_counter()
    backend = VLLMBackend("smollm2-135m", dtype=dtype, enforce_eager=eager)
    llm = backend.llm
    start_s = time.perf_counter() - started
    inputs = [{"prompt_token_ids": backend.tokenizer.encode(f"Write story number {i} about a cat.")}
              for i in range(prompts)]
    sampling = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    llm.generate(inputs[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # first call's one-off costs
    began = time.perf_counter()
    llm.generate(inputs, sampling, use_tqdm=False)
    seconds = time.perf_counter() - began
    backend.shutdown()
    return {"dtype": dtype, "enforce_eager": eager, "start_s": round(start_s, 1), "generate_s": round(seconds, 1),
            "tokens_per_s": round(prompts * tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--one", nargs=2, metavar=("DTYPE", "EAGER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "1", args.prompts, args.tokens)))
        return
    import torch

    from steer_eval.backends.vllm import cpu_has_native_bf16
    rows = []
    for dtype, eager in SETTINGS:
        result = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--tokens",
                                 str(args.tokens), "--one", dtype, str(int(eager))],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]) | {"load_average": os.getloadavg()})
        print(rows[-1], flush=True)
    report = {"command": " ".join(["python", "benchmarks/cpu_engine.py", *sys.argv[1:]]),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "native_bf16": cpu_has_native_bf16()},
              "prompts": args.prompts, "tokens": args.tokens, "rows": rows}
    out = Path(__file__).resolve().parents[1] / "results" / "bench" / f"cpu_engine_{datetime.date.today()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| dtype | eager | engine start s | decode tok/s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['dtype']} | {row['enforce_eager']} | {row['start_s']} | {row['tokens_per_s']} |")
    print(out)


if __name__ == "__main__":
    main()
