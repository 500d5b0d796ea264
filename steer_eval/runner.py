"""Run a grid on long-lived backend workers: Ray actors (a cluster or a local one), or in-process.

Ray lives only in this module. Each actor builds its backend once (one engine per actor) and serves many
chunks. Records are appended to one JSONL file as chunks finish, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from steer_eval.assembly import AssembledPrompt
from steer_eval.backends.base import GenerationConfig, SteeringBackend
from steer_eval.grid import GridItem, record_key
from steer_eval.inference import append_jsonl, evaluate, read_records

RECORDS_FILE = "records.jsonl"


@dataclass(frozen=True)
class BackendSpec:
    """How a worker builds its backend: picklable, so it can travel to a Ray actor."""
    backend: str  # hf | vllm
    model: str
    tokens_dir: str | None = None
    options: dict = field(default_factory=dict)

    def build(self) -> SteeringBackend:
        if self.backend == "vllm":
            from steer_eval.backends.vllm import VLLMBackend
            return VLLMBackend(self.model, tokens_dir=self.tokens_dir, **self.options)
        if self.backend == "hf":
            from steer_eval.backends.hf import HFBackend
            return HFBackend(self.model, tokens_dir=self.tokens_dir, **self.options)
        raise ValueError(f"unknown backend {self.backend!r}; choose hf or vllm")


class GridWorker:
    def __init__(self, spec: BackendSpec):
        self.backend = spec.build()

    def run(self, requests: Sequence[tuple], config: GenerationConfig) -> list[dict]:
        return evaluate(self.backend, requests, config)

    # What BackendPool forwards (lm-eval's data_parallel_size).
    def describe(self) -> tuple[str, object]:
        return self.backend.name, self.backend.tokenizer

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig) -> list[str]:
        return self.backend.generate(prompts, config, progress=False)

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]]) -> list[tuple[float, bool]]:
        return self.backend.loglikelihood(requests)


def _chunks(items: Sequence[GridItem], size: int) -> list[list[tuple]]:
    return [[item.request() for item in items[i:i + size]] for i in range(0, len(items), size)]


def _run_in_process(chunks, spec, config, sink, bar) -> None:
    worker = GridWorker(spec)
    for chunk in chunks:
        sink(worker.run(chunk, config))
        bar.update(len(chunk))


def _start_workers(spec: BackendSpec, actors: int, address: str | None) -> list:
    import ray
    import torch

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = 1 if (ray.cluster_resources().get("GPU", 0) > 0 or torch.cuda.is_available()) else 0
    gpus *= int(spec.options.get("tensor_parallel_size", 1))
    Worker = ray.remote(num_gpus=gpus, num_cpus=0 if gpus else 1)(GridWorker)
    return [Worker.remote(spec) for _ in range(actors)]


def _run_on_ray(chunks, spec, config, sink, bar, actors: int, address: str | None) -> None:
    import ray

    workers = _start_workers(spec, actors, address)
    pending: dict = {}
    queue = list(chunks)
    # Two chunks in flight per actor keep each engine busy while the driver writes results.
    for worker in workers * 2:
        if queue:
            chunk = queue.pop(0)
            pending[worker.run.remote(chunk, config)] = (worker, chunk)
    try:
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            worker, chunk = pending.pop(done)
            sink(ray.get(done))
            bar.update(len(chunk))
            if queue:
                next_chunk = queue.pop(0)
                pending[worker.run.remote(next_chunk, config)] = (worker, next_chunk)
    finally:
        for worker in workers:
            ray.kill(worker)


def _shards(items: Sequence, count: int) -> list[Sequence]:
    """Contiguous, nearly equal slices, so results concatenate back in input order."""
    size, extra = divmod(len(items), count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < extra))
    return [items[bounds[i]:bounds[i + 1]] for i in range(count)]


class BackendPool:
    """Looks like one backend (generate, loglikelihood, name, tokenizer); each call is split across Ray actors
    that built their backend once and keep it for the pool's life (lm-eval's data_parallel_size)."""

    def __init__(self, spec: BackendSpec, actors: int, address: str | None = None):
        import ray

        self.workers = _start_workers(spec, actors, address)
        self.name, self.tokenizer = ray.get(self.workers[0].describe.remote())

    def _map(self, method: str, items: Sequence, *args) -> list:
        import ray

        shards = _shards(list(items), len(self.workers))
        futures = [getattr(worker, method).remote(shard, *args) for worker, shard in zip(self.workers, shards) if shard]
        return [result for part in ray.get(futures) for result in part]

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        return self._map("generate", prompts, config)

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]]) -> list[tuple[float, bool]]:
        return self._map("loglikelihood", requests)

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


def run_grid(items: Sequence[GridItem], spec: BackendSpec, config: GenerationConfig, output_dir: str | Path, *,
             actors: int = 0, address: str | None = None, chunk_size: int = 64, progress: bool = True) -> list[dict]:
    """Evaluate every item not already in output_dir/records.jsonl; return all records of this grid.

    actors=0 runs in this process; actors>=1 starts that many Ray actors (address: a cluster, e.g. 'auto').
    """
    output = Path(output_dir) / RECORDS_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    wanted = {item.key for item in items}
    done = {record_key(r): r for r in read_records(output) if record_key(r) in wanted}
    todo = [item for item in items if item.key not in done]
    if done and progress:
        print(f"resuming: {len(done)} of {len(items)} evaluations already in {output}", file=sys.stderr)

    def sink(records: list[dict]) -> None:
        append_jsonl(output, records)
        done.update((record_key(r), r) for r in records)

    chunks = _chunks(todo, chunk_size)
    with tqdm(total=len(todo), desc="grid", unit="eval", disable=not progress) as bar:
        if actors <= 0:
            _run_in_process(chunks, spec, config, sink, bar)
        else:
            _run_on_ray(chunks, spec, config, sink, bar, actors, address)
    return [done[item.key] for item in items]
