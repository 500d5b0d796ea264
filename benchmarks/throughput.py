"""Throughput of steering in vLLM against plain vLLM, and of the vLLM backend against the HF backend.

    python benchmarks/throughput.py [--prompts 128] [--max-new-tokens 256] [--hf-batch-size 32]

One machine, one run, the same prompts (bundled test split, then val), greedy decoding, the same maximum of new
tokens everywhere. Engines run one after another, never two at once:
  1. plain vLLM on the original model with text prompts (no prompt-embeds flag): the reference;
  2. the steer-eval vLLM backend: control method text, steering with 1 token, 2 tokens + <and>, hybrid;
  3. the steer-eval HF backend with steering.
Greedy outputs stop at EOS, so configurations generate different lengths; a second, "forced" section therefore
runs plain token ids and steering token ids for exactly `--forced-tokens` tokens each (EOS ignored), which isolates
the cost of the input path: plain ids on the plain engine, then plain ids and steering ids alternately on the
backend's engine. vLLM runs repeat `--repeats` times and keep the fastest (all attempts are recorded). Steering vectors are random (norm of an average embedding row), stored with
TokenStore in a temporary folder. Writes results/bench/throughput_<date>.json with the machine and the command.
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
import threading
import time
from pathlib import Path

import psutil
import torch

from steer_eval.scoring.behaviors import AND_TOKEN
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import model_label, resolve_model_path
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenStore

STEERING_RUNS = {  # name -> (behaviours, control method, mode)
    "vllm_text": (["german"], "text", "composition"),
    "vllm_steering_1": (["german"], "steering", "composition"),
    "vllm_steering_2_and": (["german", "words_10_50"], "steering", "composition"),
    "vllm_hybrid": (["german"], "hybrid", "composition"),
}


class PeakRSS:
    """Peak resident memory of this process and all its children (vLLM runs its engine in child processes)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(name: str, run, count, evaluations: int, repeats: int = 1) -> dict:
    """Time `run()` `repeats` times and keep the fastest (the machine is shared: slower runs measure the
    neighbours); every run's seconds, memory and load average are kept too."""
    attempts = []
    for _ in range(repeats):
        load_before = load_average()
        with PeakRSS() as memory:
            start = time.perf_counter()
            outputs = run()
            seconds = time.perf_counter() - start
        attempts.append({"seconds": round(seconds, 2), "output_tokens": count(outputs),
                         "peak_rss_gib": round(memory.peak / 2 ** 30, 2), "load_before": load_before,
                         "load_after": load_average()})
    best = min(attempts, key=lambda a: a["seconds"] / a["output_tokens"])
    result = {"name": name, **best, "evaluations": evaluations,
              "output_tokens_per_s": round(best["output_tokens"] / best["seconds"], 1),
              "evaluations_per_s": round(evaluations / best["seconds"], 3),
              "peak_rss_gib": max(a["peak_rss_gib"] for a in attempts), "attempts": attempts}
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def random_tokens(folder: Path, embedding: torch.Tensor, model_id: str) -> None:
    identity = ModelIdentity.of(model_id, embedding)
    scale = embedding.float().norm(dim=1).mean() / embedding.shape[1] ** 0.5
    generator = torch.Generator().manual_seed(0)
    store = TokenStore(folder)
    for name, behaviors in (("german", ("german",)), ("words_10_50", ("words_10_50",)), (AND_TOKEN, ())):
        vector = torch.randn(embedding.shape[1], generator=generator) * scale
        store.save(SteeringToken(name, vector, behaviors, identity, {"benchmark": "random vector"}))


def engine_tokens(outputs) -> int:
    return sum(len(output.outputs[0].token_ids) for output in outputs)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import transformers
    import vllm
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "vllm": vllm.__version__, "transformers": transformers.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--forced-tokens", type=int, default=128)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="vLLM runs per configuration (fastest kept)")
    parser.add_argument("--output", default=None, help="default: results/bench/throughput_<date>.json")
    args = parser.parse_args(argv)

    from vllm import LLM, SamplingParams

    from steer_eval.backends.hf import HFBackend
    from steer_eval.backends.vllm import VLLMBackend

    prompts = [p.prompt for p in bundled_prompts("test") + bundled_prompts("val")][:args.prompts]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    greedy = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)
    forced = SamplingParams(max_tokens=args.forced_tokens, temperature=0.0, ignore_eos=True)
    tokens_dir = Path(tempfile.mkdtemp(prefix="steer-eval-bench-tokens-"))
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": datetime.date.today().isoformat(),
              "machine": machine(), "model": args.model, "prompts": len(prompts),
              "max_new_tokens": args.max_new_tokens, "forced_tokens": args.forced_tokens, "decoding": "greedy",
              "repeats": args.repeats,
              "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "runs": [], "forced": [], "engine_start_s": {}}

    # 1. The reference: plain vLLM, original model, text prompts, default engine settings of the backend.
    start = time.perf_counter()
    backend = VLLMBackend(args.model, tokens_dir=tokens_dir)  # builds the spare-row model copy on first use
    report["engine_start_s"]["steer_eval_vllm_backend_init"] = round(time.perf_counter() - start, 1)
    random_tokens(tokens_dir, backend.embedding_weight, model_label(args.model))
    engine_settings = {k: v for k, v in backend.engine_kwargs.items()}
    report["engine_settings"] = engine_settings
    texts = [backend.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]
    start = time.perf_counter()
    plain = LLM(model=resolve_model_path(args.model), **engine_settings)
    report["engine_start_s"]["plain_vllm"] = round(time.perf_counter() - start, 1)
    report["engine_dtype"] = str(plain.llm_engine.vllm_config.model_config.dtype)
    # Greedy outputs are counted the same way for every configuration: their text, re-tokenised.
    text_tokens = lambda outputs: sum(len(backend.tokenizer.encode(t, add_special_tokens=False)) for t in outputs)
    report["runs"].append(measure("plain_vllm_text", lambda: [o.outputs[0].text for o in plain.generate(
        texts, greedy, use_tqdm=False)], text_tokens, len(prompts), args.repeats))
    plain_ids = [backend.assemble(p, []).input_ids for p in prompts]
    report["forced"].append(measure("plain_vllm_token_ids", lambda: plain.generate(
        [{"prompt_token_ids": list(ids)} for ids in plain_ids], forced, use_tqdm=False), engine_tokens,
        len(prompts), args.repeats))
    plain.llm_engine.engine_core.shutdown()
    del plain

    # 2. The steer-eval vLLM backend (engine with spare steering rows).
    start = time.perf_counter()
    backend.llm
    report["engine_start_s"]["steer_eval_vllm"] = round(time.perf_counter() - start, 1)
    for name, (behaviors, control_method, mode) in STEERING_RUNS.items():
        assembled = [backend.assemble(p, behaviors, control_method=control_method, mode=mode) for p in prompts]
        report["runs"].append(measure(name, lambda: backend.generate(assembled, config, progress=False),
                                      text_tokens, len(prompts), args.repeats))
    steered = [backend.assemble(p, ["german"]) for p in prompts]
    backend.generate(steered[:1], GenerationConfig(max_new_tokens=1), progress=False)  # rows are in place
    forced_inputs = {"steering_rows_token_ids": [{"prompt_token_ids": backend.token_ids(a)} for a in steered],
                     "plain_token_ids_same_engine": [{"prompt_token_ids": list(ids)} for ids in plain_ids]}
    # Alternating the two on one engine cancels slow drifts in the neighbours' load.
    for _ in range(args.repeats):
        for name, inputs in forced_inputs.items():
            run = measure(name, lambda: backend.llm.generate(inputs, forced, use_tqdm=False), engine_tokens,
                          len(prompts))
            previous = next((r for r in report["forced"] if r["name"] == name), None)
            if previous is None:
                report["forced"].append(run)
            elif run["output_tokens_per_s"] > previous["output_tokens_per_s"]:
                previous.update(run, attempts=previous["attempts"] + run["attempts"])
            else:
                previous["attempts"] += run["attempts"]
    backend.shutdown()

    # 3. The HF backend with steering (its default dtype on this machine).
    start = time.perf_counter()
    hf = HFBackend(args.model, tokens_dir=tokens_dir, batch_size=args.hf_batch_size)
    report["engine_start_s"]["hf"] = round(time.perf_counter() - start, 1)
    report["hf_dtype"] = str(hf.model.dtype)
    report["runs"].append(measure("hf_steering_1", lambda: hf.generate(steered, config, progress=False),
                                  text_tokens, len(prompts)))

    reference = report["runs"][0]["output_tokens_per_s"]
    for run in report["runs"]:
        run["ratio_to_plain_vllm"] = round(run["output_tokens_per_s"] / reference, 3)
    by_name = {run["name"]: run for run in report["runs"]}
    report["vllm_over_hf_steering"] = round(by_name["vllm_steering_1"]["output_tokens_per_s"]
                                            / by_name["hf_steering_1"]["output_tokens_per_s"], 2)
    forced_by_name = {run["name"]: run["output_tokens_per_s"] for run in report["forced"]}
    report["forced_steering_over_plain_engine"] = round(forced_by_name["steering_rows_token_ids"]
                                                        / forced_by_name["plain_vllm_token_ids"], 3)
    report["forced_steering_over_plain_same_engine"] = round(forced_by_name["steering_rows_token_ids"]
                                                             / forced_by_name["plain_token_ids_same_engine"], 3)
    report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    output = Path(args.output or f"results/bench/throughput_{report['date']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k.startswith(("vllm_over", "forced_steering"))}))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
