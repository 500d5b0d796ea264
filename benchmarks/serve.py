"""`steer-eval serve` under load: plain requests, every request steered with one token, and every request with a
different steering (a mixed batch), side by side in one run on one server.

    python benchmarks/serve.py [--requests 256] [--concurrency 1 8 32] [--tokens 64] [--port 8123]

One server (`steer-eval serve`, the default model and its shipped tokens) answers every run. For each concurrency
N the three loads run one after another, each `--requests` chat requests from N concurrent clients: greedy, the
bundled test prompts in order, and exactly `--tokens` new tokens each (`min_tokens` = `max_tokens`, so lengths
match). Per run: output tokens/s over the run's wall time, p50/p99 latency per request, and the ratio of steered and
mixed throughput to plain at the same N. Writes results/bench/serve_<date>.json (machine, command, rows) and prints
the table of docs/benchmarks/serving.md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from steer_eval.scoring.behaviors import AND_TOKEN, compatible_combinations
from steer_eval.scoring.prompts import bundled_prompts

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"


def mixed_steerings(count: int) -> list[list[str]]:
    """`count` different steerings: every behaviour alone, then ordered pairs joined by <and>, then triples."""
    settings = []
    for k in (1, 2, 3):
        for combination in compatible_combinations(k):
            for order in itertools.permutations(b.id for b in combination):
                settings.append([x for b in order for x in (AND_TOKEN, b)][1:])
    if len(settings) < count:
        raise SystemExit(f"only {len(settings)} different steerings exist; ask for at most that many requests")
    return settings[:count]


def loads(requests: int) -> dict[str, list[dict]]:
    return {"plain": [{}] * requests, "steered": [{"steering": ["german"]}] * requests,
            "mixed": [{"steering": s} for s in mixed_steerings(requests)]}


async def run_load(url: str, key: str, prompts: list[str], extras: list[dict], concurrency: int, tokens: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for index, extra in enumerate(extras):
        queue.put_nowait((prompts[index % len(prompts)], extra))
    latencies, generated = [], []

    async def client(http: httpx.AsyncClient):
        while not queue.empty():
            prompt, extra = queue.get_nowait()
            began = time.perf_counter()
            reply = await http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": tokens, "min_tokens": tokens, **extra})
            reply.raise_for_status()
            latencies.append(time.perf_counter() - began)
            generated.append(reply.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(base_url=url, timeout=3600, headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    assert set(generated) == {tokens}, f"lengths differ: {sorted(set(generated))}"
    latencies.sort()
    return {"requests": len(extras), "wall_s": round(wall, 2), "output_tokens": sum(generated),
            "output_tokens_per_s": round(sum(generated) / wall, 1),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p99_latency_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "distinct_steerings": len({json.dumps(e) for e in extras})}


def start_server(port: int, key: str, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "steer_eval.cli", "serve", "--port", str(port)]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "VLLM_API_KEY": key})
    deadline = time.monotonic() + 900
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--output", default=None, help="default: results/bench/serve_<date>.json")
    args = parser.parse_args(argv)
    key = os.urandom(16).hex()
    prompts = [p.prompt for p in bundled_prompts("test")]
    log_path = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "server.log"
    print(f"server log: {log_path}", flush=True)
    server = start_server(args.port, key, log_path)
    rows = []
    try:
        url = f"http://127.0.0.1:{args.port}"
        for concurrency in args.concurrency:
            for name, extras in loads(args.requests).items():
                row = {"concurrency": concurrency, "load": name,
                       **asyncio.run(run_load(url, key, prompts, extras, concurrency, args.tokens)),
                       "load_average": os.getloadavg()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(120)
    plain = {row["concurrency"]: row["output_tokens_per_s"] for row in rows if row["load"] == "plain"}
    for row in rows:
        row["over_plain"] = round(row["output_tokens_per_s"] / plain[row["concurrency"]], 3)
    report = {"command": " ".join(["python", "benchmarks/serve.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.date.today().isoformat(),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "platform": platform.platform()},
              "model": MODEL, "tokens": args.tokens, "rows": rows}
    out = Path(args.output or ROOT / "results" / "bench" / f"serve_{report['date']}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| clients | load | output tok/s | vs plain | p50 s | p99 s |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['concurrency']} | {row['load']} | {row['output_tokens_per_s']} | {row['over_plain']} | "
              f"{row['p50_latency_s']} | {row['p99_latency_s']} |")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
