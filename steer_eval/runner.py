"""The one runner: requests in, records out, on long-lived backend workers (Ray actors or this process).

`run()` is what `steer-eval grid`, `steer-eval infer`, the token evaluation and the teacher-data builder call.
With an output file it checks the run identity (run_identity.py), skips requests whose records are already
there (same key), appends records as chunks finish and returns the records of the requests asked for, so an
interrupted run resumes where it stopped and a different run is refused instead of mixed in.

Ray lives only in this module. Each actor builds its backend once (one engine per actor) and serves many
chunks; `BackendPool` is the same workers behind a backend's interface (lm-eval's data_parallel_size).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from steer_eval.assembly import AssembledPrompt, steering_sequence
from steer_eval.backends.base import SteeringBackend
from steer_eval.backends.spec import BackendSpec
from steer_eval.behaviors import AND_TOKEN
from steer_eval.errors import RunMismatchError, UserError
from steer_eval.generation import GenerationConfig
from steer_eval.models import model_label, resolve_model_path
from steer_eval.records import Record, Request, append_records, read_rows
from steer_eval.run_identity import RunIdentity, check_identity, exclusive, set_aside, write_manifest
from steer_eval.scoring import SCORER_VERSION, scorer_spec, verify
from steer_eval.tokens import TokenError, TokenStore, default_tokens_dir

RECORDS_FILE = "records.jsonl"
DEFAULT_CHUNK_SIZE = 64


def evaluate(backend: SteeringBackend, requests: Sequence[Request], config: GenerationConfig,
             run_id: str = "") -> list[Record]:
    """Assemble, generate and verify; one record per request, in order."""
    assembled = [backend.assemble(r.prompt, r.behaviors, control_method=r.control_method, mode=r.mode,
                                  paraphrase_seed=r.paraphrase_seed) for r in requests]
    # Each sample index gets its own sampling seed, so several samples of one prompt differ.
    by_sample: dict[int, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        by_sample[request.sample].append(index)
    responses: list[str] = [""] * len(requests)
    for sample, indices in by_sample.items():
        texts = backend.generate([assembled[i] for i in indices], sample_config(config, sample), progress=False)
        for index, text in zip(indices, texts):
            responses[index] = text
    return [Record(request, response, verify(request.behaviors, response).per_behavior,
                   scorer_spec(request.behaviors), sample_config(config, request.sample).as_dict(),
                   prompt.token_names, prompt.instruction, backend.name, backend.model_spec, run_id)
            for request, prompt, response in zip(requests, assembled, responses)]


def sample_config(config: GenerationConfig, sample: int) -> GenerationConfig:
    return config if sample == 0 else replace(config, seed=config.seed + sample)


def token_names(requests: Iterable[Request]) -> set[str]:
    """The steering tokens these requests put into prompts."""
    settings = {(r.behaviors, r.control_method, r.mode) for r in requests if r.control_method != "text"}
    return {item for behaviors, _, mode in settings for item in steering_sequence(behaviors, mode)
            if not item.startswith(" ")}


def token_fingerprints(spec: BackendSpec, names: set[str]) -> dict[str, str]:
    """name -> vector fingerprint; every missing token is named at once, before any model is loaded."""
    store = TokenStore(spec.tokens_dir or default_tokens_dir(model_label(spec.model)))
    missing = sorted(name for name in names if not store.has(name))
    if missing:
        available = ", ".join(store.names()) or "none"
        hint = (f"; composition mode needs a trained {AND_TOKEN} (or use mode concatenation or native_and)"
                if AND_TOKEN in missing else "")
        raise TokenError(f"this run needs steering tokens {', '.join(missing)}, which {store.directory} lacks "
                         f"(available: {available}){hint}; train them (trainers/train.py), pass --tokens-dir with "
                         "a folder that has them, choose behaviours that have tokens, or use --control-method text")
    return {name: store.load(name).fingerprint for name in sorted(names)}


def run_identity(spec: BackendSpec, config: GenerationConfig, requests: Sequence[Request]) -> RunIdentity:
    return RunIdentity(model_label(spec.model), spec.backend, spec.dtype, config.as_dict(),
                       {"scorer": "steer_eval.scoring.verify", "version": SCORER_VERSION},
                       token_fingerprints(spec, token_names(requests)))


class GridWorker:
    """One backend, built once, serving chunks of requests (and BackendPool's generate/loglikelihood)."""

    def __init__(self, spec: BackendSpec, backend: SteeringBackend | None = None):
        self.backend = backend or spec.build()

    def fingerprint(self) -> str:
        return self.backend.fingerprint

    def run(self, requests: Sequence[Request], config: GenerationConfig, run_id: str) -> list[Record]:
        return evaluate(self.backend, requests, config, run_id)

    def describe(self) -> tuple[str, object]:
        return self.backend.name, self.backend.tokenizer

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig) -> list[str]:
        return self.backend.generate(prompts, config, progress=False)

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]]) -> list[tuple[float, bool]]:
        return self.backend.loglikelihood(requests, progress=False)


def _start_workers(spec: BackendSpec, actors: int, address: str | None) -> list:
    import ray
    import torch

    # "local" starts a private instance; None would attach to any cluster recorded in Ray's temp folder, even a dead one.
    ray.init(address=address or "local", ignore_reinit_error=True, log_to_driver=False)
    gpus = 1 if (ray.cluster_resources().get("GPU", 0) > 0 or torch.cuda.is_available()) else 0
    gpus *= int(spec.options.get("tensor_parallel_size", 1))
    Worker = ray.remote(num_gpus=gpus, num_cpus=0 if gpus else 1)(GridWorker)
    return [Worker.remote(spec) for _ in range(actors)]


class _InProcess:
    def __init__(self, spec: BackendSpec, backend: SteeringBackend | None):
        self.worker = GridWorker(spec, backend)
        self.owned = backend is None

    def fingerprint(self) -> str:
        return self.worker.fingerprint()

    def run(self, chunks, config, run_id, sink) -> None:
        for chunk in chunks:
            sink(self.worker.run(chunk, config, run_id))

    def close(self) -> None:
        if self.owned:
            self.worker.backend.shutdown()


class _OnRay:
    def __init__(self, spec: BackendSpec, actors: int, address: str | None):
        self.workers = _start_workers(spec, actors, address)

    def fingerprint(self) -> str:
        import ray
        fingerprints = set(ray.get([worker.fingerprint.remote() for worker in self.workers]))
        if len(fingerprints) != 1:
            raise RunMismatchError(f"the Ray workers loaded different models ({', '.join(sorted(fingerprints))}); "
                                   "give every node the same model files")
        return fingerprints.pop()

    def run(self, chunks, config, run_id, sink) -> None:
        import ray

        queue = list(chunks)
        pending: dict = {}
        # Two chunks in flight per actor keep each engine busy while the driver writes results.
        for worker in self.workers * 2:
            if queue:
                pending[worker.run.remote(queue.pop(0), config, run_id)] = worker
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            worker = pending.pop(done)
            sink(ray.get(done))
            if queue:
                pending[worker.run.remote(queue.pop(0), config, run_id)] = worker

    def close(self) -> None:
        import ray
        for worker in self.workers:
            ray.kill(worker)


def _stored_keys(path: Path, run_id: str, prompts: dict[str, str]) -> set[str]:
    """Keys of the records already in the file; refuses rows of another run or another prompt under the same id."""
    keys = set()
    for row in read_rows(path):
        request = Request.from_json(row)
        if row.get("run") != run_id:
            raise RunMismatchError(f"{path} holds a record of run {row.get('run')!r}, not {run_id!r} as its manifest "
                                   "says (files of two runs were combined?); write to a new output, or rerun with "
                                   "--restart to move them aside")
        expected = prompts.get(request.key)
        if expected is not None and expected != request.prompt:
            raise RunMismatchError(f"{path} has a record for prompt id {request.prompt_id!r} with another prompt text "
                                   "than this run's; prompt ids must name the same prompt in every run into one "
                                   "output: use a new output or give the prompts stable ids")
        keys.add(request.key)
    return keys


def _collect(path: Path, requests: Sequence[Request]) -> list[Record]:
    wanted = {r.key for r in requests}
    found: dict[str, Record] = {}
    for row in read_rows(path):
        key = Request.from_json(row).key
        if key in wanted and key not in found:
            found[key] = Record.from_json(row)
    return [found[r.key] for r in requests]


def run(requests: Sequence[Request], spec: BackendSpec, config: GenerationConfig, output: str | Path | None = None,
        *, actors: int = 0, address: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = True, restart: bool = False, backend: SteeringBackend | None = None,
        on_records: Callable[[list[Record]], None] | None = None) -> list[Record]:
    """Evaluate every request not already recorded in `output` (a JSONL file); return the requests' records.

    actors=0 runs in this process (on `backend` if one is given, else one built from `spec`); actors>=1 starts
    that many Ray actors (address: a cluster, e.g. 'auto'). Without `output` nothing is written or resumed.
    """
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, got {chunk_size}")
    if actors < 0:
        raise UserError(f"actors must be 0 (this process) or more, got {actors}")
    requests = list(requests)
    if len({r.key for r in requests}) != len(requests):
        raise ValueError("the same request appears twice in one run")
    identity = run_identity(spec, config, requests)
    if output is None:
        results: dict[str, Record] = {}
        _execute(requests, spec, config, identity, None, actors, address, chunk_size, progress, backend,
                 lambda records: results.update((r.key, r) for r in records), on_records)
        return [results[r.key] for r in requests]

    path = Path(output)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a records file (e.g. {path / RECORDS_FILE})")
    with exclusive(path):
        if restart:
            set_aside(path)
        stored = check_identity(path, identity)
        done = _stored_keys(path, identity.run_id, {r.key: r.prompt for r in requests}) if stored else set()
        todo = [r for r in requests if r.key not in done]
        if done and progress:
            print(f"resuming: {len(requests) - len(todo)} of {len(requests)} evaluations already in {path}",
                  file=sys.stderr)
        if todo:
            _execute(todo, spec, config, identity, stored, actors, address, chunk_size, progress, backend,
                     lambda records: append_records(path, records), on_records, path)
        return _collect(path, requests)


def _execute(todo, spec, config, identity, stored, actors, address, chunk_size, progress, backend, sink,
             on_records, path: Path | None = None) -> None:
    if backend is None:
        resolve_model_path(spec.model)  # a missing model folder fails here, not inside a worker
    workers = _InProcess(spec, backend) if actors == 0 else _OnRay(spec, actors, address)
    try:
        identity = replace(identity, model_fingerprint=workers.fingerprint())
        if path is not None:
            if stored is not None and identity.conflicts(stored):
                raise RunMismatchError(f"{path} holds records of another run: {'; '.join(identity.conflicts(stored))}."
                                       " Write to a new output, or rerun with --restart")
            write_manifest(path, identity.merged(stored))  # before the first record
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        with tqdm(total=len(todo), desc="evaluations", unit="eval", disable=not progress) as bar:
            def deliver(records: list[Record]) -> None:
                sink(records)
                if on_records:
                    on_records(records)
                bar.update(len(records))
            workers.run(chunks, config, identity.run_id, deliver)
    finally:
        workers.close()


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

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]],
                      progress: bool = True) -> list[tuple[float, bool]]:
        return self._map("loglikelihood", requests)

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
