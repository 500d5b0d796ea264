"""The one runner: requests in, records out, on long-lived backend workers (Ray actors or this process).

`run()` is what `steer-eval grid`, `steer-eval infer`, the token evaluation and the teacher-data builder call.
With an output file it checks the run identity (run_identity.py), skips requests whose records are already
there (same key), appends records as chunks finish, so an interrupted run resumes where it stopped and a
different run is refused instead of mixed in.

Memory stays flat at a million evaluations: the requests are streamed (a `grid.GridPlan` is generated lazily),
finished work is remembered as one 8-byte hash per key (never as records), and records go straight to the file.
Callers that want the records back read them with `RunResult.records()`.
"""
from __future__ import annotations

import logging
import time
from array import array
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from steer_eval.steering.activation import unsupported_backend
from steer_eval.steering.assembly import vector_names
from steer_eval.runs.simulate import SIMULATED_SCORER
from steer_eval.runs.backend_spec import DEFAULT_CHUNK_SIZE, BackendSpec
from steer_eval.scoring.behaviors import AND_TOKEN, resolve
from steer_eval.errors import RunMismatchError, UserError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import model_label, resolve_model_path, weights_fingerprint
from steer_eval.runs.records import (Record, Request, append_records, decode_records, parse_record, read_records,
                                read_rows)
from steer_eval.runs.identity import (RunIdentity, check_identity, exclusive, read_manifest, read_throughput,
                                     set_aside, write_manifest)
from steer_eval.scoring.verdict import SCORER_NAME, SCORER_VERSION
from steer_eval.steering.tokens import TokenError, TokenStore, default_tokens_dir
from steer_eval.runs.workers import Chunk, InProcessWorkers, RayWorkers

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"


@dataclass
class PlanScan:
    """What one streaming pass over the requests tells before anything runs."""
    count: int = 0
    tokens: set[str] = field(default_factory=set)  # steering tokens and activation vectors the prompts need
    control_methods: set[str] = field(default_factory=set)
    prompts: dict[str, str] = field(default_factory=dict)  # prompt id -> text
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted key hashes


def scan(requests: Iterable[Request]) -> PlanScan:
    """Count the requests, name the tokens they need, and refuse repeated keys or one prompt id with two texts."""
    result, settings, hashes = PlanScan(), set(), array("q")
    for request in requests:
        result.count += 1
        hashes.append(hash(request.key))
        settings.add((request.behaviors, request.control_method, request.mode))
        known = result.prompts.setdefault(request.prompt_id, request.prompt)
        if known != request.prompt:
            raise UserError(f"prompt id {request.prompt_id!r} names two different prompts; give every prompt its "
                            "own id")
    for behaviors, _, _ in settings:
        resolve(behaviors)  # an unknown behaviour is named as one, not as a missing steering token
    result.hashes = _sorted_in_place(hashes)
    if np.count_nonzero(result.hashes[1:] == result.hashes[:-1]):
        raise UserError("the same evaluation appears twice in one run (repeated prompt ids or settings); remove "
                        "the repetition")
    result.tokens = {name for setting in settings for name in vector_names(*setting)}
    result.control_methods = {control_method for _, control_method, _ in settings}
    return result


def _check_backend_can_run(plan: PlanScan, spec: BackendSpec) -> None:
    refusal = unsupported_backend(plan.control_methods, spec.backend, "run it with --backend hf")
    if refusal:
        raise UserError(refusal)


def token_fingerprints(spec: BackendSpec, names: set[str]) -> dict[str, str]:
    """name -> vector fingerprint; every missing token is named at once, before any model is loaded."""
    if spec.simulated or not names:
        return {}
    store = _token_store(spec)
    missing = missing_tokens(spec, names)
    if missing:
        available = ", ".join(store.names()) or "none"
        hint = (f"; composition mode needs a trained {AND_TOKEN} (or use mode concatenation or native_and)"
                if AND_TOKEN in missing else "")
        how = ("train them (trainers/train.py; caa/* vectors: trainers/caa.py, prosv/*: trainers/train_prosv.py)"
               if any("/" in name for name in missing) else "train them (trainers/train.py)")
        raise TokenError(f"this run needs steering tokens {', '.join(missing)}, which {store.directory} lacks "
                         f"(available: {available}){hint}; {how}, pass --tokens-dir with "
                         "a folder that has them, choose behaviours that have tokens, or use --control-method text")
    return {name: store.load(name).fingerprint for name in sorted(names)}


def _token_store(spec: BackendSpec) -> TokenStore:
    return TokenStore(spec.tokens_dir or default_tokens_dir(model_label(spec.model)))


def missing_tokens(spec: BackendSpec, names: set[str]) -> list[str]:
    if spec.simulated:
        return []
    store = _token_store(spec)
    return sorted(name for name in names if not store.has(name))


def run_identity(spec: BackendSpec, config: GenerationConfig, tokens: set[str]) -> RunIdentity:
    if spec.simulated:
        return RunIdentity(model_label(spec.model), spec.backend, spec.dtype, config.as_dict(), SIMULATED_SCORER)
    tokens = token_fingerprints(spec, tokens)  # missing tokens are named before the model's files are read
    return RunIdentity(model_label(spec.model), spec.backend, spec.dtype, config.as_dict(),
                       {"scorer": SCORER_NAME, "version": SCORER_VERSION}, tokens,
                       weights=weights_fingerprint(spec.model),
                       chat_template=dict(spec.options.get("chat_template_kwargs") or {}))


def _stored_hashes(path: Path, run_id: str, prompts: dict[str, str]) -> np.ndarray:
    """Sorted key hashes of the records already in the file (responses are parsed and dropped, never kept);
    refuses rows of another run or another prompt text under one of this run's prompt ids."""
    hashes = array("q")
    for number, row in enumerate(read_rows(path), start=1):
        record = parse_record(row, str(path), number)  # the reader's validation: a row that is no record is named
        request = record.request
        if record.run != run_id:
            raise RunMismatchError(f"{path} holds a record of run {record.run!r}, not {run_id!r} as its manifest "
                                   "says (files of two runs were combined?); write to a new output, or rerun with "
                                   "--restart to move them aside")
        expected = prompts.get(request.prompt_id)
        if expected is not None and expected != request.prompt:
            raise RunMismatchError(f"{path} has a record for prompt id {request.prompt_id!r} with another prompt text "
                                   "than this run's; prompt ids must name the same prompt in every run into one "
                                   "output: use a new output or give the prompts stable ids")
        hashes.append(hash(request.key))
    return _sorted_in_place(hashes)


def _sorted_in_place(hashes: array) -> np.ndarray:
    """The hashes sorted, as an int64 array over the same memory: 8 bytes a key and no copy (np.unique's copies
    and index arrays tripled the driver's peak at 10M evaluations)."""
    keys = np.frombuffer(hashes, dtype=np.int64)
    keys.sort()
    return keys


def _recorded(done: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in the sorted array `done` (binary search: no temporaries the size of `done`)."""
    if not len(done):
        return np.zeros(len(hashes), dtype=bool)
    where = np.searchsorted(done, hashes).clip(max=len(done) - 1)
    return done[where] == hashes


def _pending(requests: Iterable[Request], done: np.ndarray, chunk_size: int) -> Iterator[Chunk]:
    """Numbered chunks of the requests whose hash is not in `done`, generated as the workers ask for them."""
    iterator, number, chunk = iter(requests), 0, []
    while block := list(islice(iterator, 4096)):
        hashes = np.fromiter((hash(r.key) for r in block), dtype=np.int64, count=len(block))
        for request, skip in zip(block, _recorded(done, hashes)):
            if not skip:
                chunk.append(request)
                if len(chunk) == chunk_size:
                    yield number, chunk
                    number, chunk = number + 1, []
    if chunk:
        yield number, chunk


@dataclass
class RunResult:
    requests: Iterable[Request]
    output: Path | None
    planned: int
    skipped: int  # already in the output before this run
    evaluated: int  # run now
    in_memory: dict[str, Record] | None = None  # without an output file
    per_node: dict[str, int] = field(default_factory=dict)  # evaluations run now, by Ray node (or this process)

    def records(self) -> list[Record]:
        """The records of the requests asked for, in their order (read back from the output file)."""
        if self.in_memory is not None:
            return [self.in_memory[r.key] for r in self.requests]
        found: dict[str, Record] = {}
        wanted = {r.key for r in self.requests}
        for record in read_records(self.output):
            if record.key in wanted:
                found.setdefault(record.key, record)
        return [found[r.key] for r in self.requests]


def run(requests: Iterable[Request], spec: BackendSpec, config: GenerationConfig, output: str | Path | None = None,
        *, actors: int = 0, address: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = True, restart: bool = False, backend=None,
        on_records: Callable[[list[Record]], None] | None = None) -> RunResult:
    """Evaluate every request not already recorded in `output` (a JSONL file).

    `requests` may be a list or a re-iterable plan (grid.GridPlan); it is streamed twice. actors=0 runs in this
    process (on `backend` if one is given, else one built from `spec`); actors>=1 starts that many Ray actors
    (address: a cluster's, else a private Ray instance). Without `output` nothing is written or resumed.
    """
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, got {chunk_size}")
    if actors < 0:
        raise UserError(f"actors must be 0 (this process) or more, got {actors}")
    if iter(requests) is requests:  # a one-shot iterator cannot be streamed twice
        requests = list(requests)
    plan = scan(requests)
    _check_backend_can_run(plan, spec)
    identity = run_identity(spec, config, plan.tokens)
    if output is None:
        results: dict[str, Record] = {}
        per_node = _execute(_pending(requests, np.empty(0, np.int64), chunk_size), plan.count, spec, config, identity,
                            None, actors, address, progress, backend,
                            lambda data: results.update((r.key, r) for r in decode_records(data)), on_records)
        return RunResult(requests, None, plan.count, 0, plan.count, results, per_node)

    path = Path(output)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a records file (e.g. {path / RECORDS_FILE})")
    with exclusive(path):
        if restart:
            set_aside(path)
        stored = check_identity(path, identity)
        done = _stored_hashes(path, identity.run_id, plan.prompts) if stored else np.empty(0, np.int64)
        todo = plan.count - int(_recorded(done, plan.hashes).sum())
        if todo < plan.count:
            logger.info(f"resuming: {plan.count - todo} of {plan.count} evaluations already in {path}")
        per_node = {}
        if todo:
            per_node = _execute(_pending(requests, done, chunk_size), todo, spec, config, identity, stored, actors,
                                address, progress, backend, lambda data: append_records(path, data), on_records, path)
        return RunResult(requests, path, plan.count, plan.count - todo, todo, per_node=per_node)


def _execute(chunks: Iterator[Chunk], todo: int, spec, config, identity, stored, actors, address, progress, backend,
             sink, on_records, path: Path | None = None) -> dict[str, int]:
    if backend is None and not spec.simulated:
        resolve_model_path(spec.model)  # a missing model folder fails here, not inside a worker
    workers = InProcessWorkers(spec, backend) if actors == 0 else RayWorkers(spec, actors, address)
    written, started = 0, None
    try:
        identity = replace(identity, model_fingerprint=workers.fingerprint())
        started = time.monotonic()  # the rate --dry-run estimates from excludes model loading
        if path is not None:
            if stored is not None and identity.conflicts(stored):
                raise RunMismatchError(f"{path} holds records of another run: {'; '.join(identity.conflicts(stored))}."
                                       " Write to a new output, or rerun with --restart")
            write_manifest(path, identity.merged(stored))  # before the first record
        with tqdm(total=todo, desc="evaluations", unit="eval", disable=not progress) as bar:
            def deliver(chunk: list[Request], data: bytes) -> None:
                nonlocal written
                sink(data)
                written += len(chunk)
                if on_records:
                    on_records(decode_records(data))
                bar.update(len(chunk))
            workers.run(chunks, config, identity.run_id, deliver)
        return dict(workers.per_node)
    finally:
        workers.close()
        if path is not None and written and started is not None:
            write_manifest(path, identity.merged(stored), {"evaluations": written, "actors": actors,
                                                           "seconds": round(time.monotonic() - started, 3)})


def dry_run(requests: Iterable[Request], spec: BackendSpec, output: str | Path | None, actors: int = 0) -> dict:
    """What `run` would do, without loading a model: evaluations planned and already recorded, tokens needed and
    missing, and a time estimate from the output's last measured rate."""
    plan = scan(requests)
    _check_backend_can_run(plan, spec)
    done = 0
    path = Path(output) if output is not None else None
    if path is not None and path.is_file() and read_manifest(path) is not None:
        run_id = read_manifest(path).run_id
        stored = _stored_hashes(path, run_id, plan.prompts)
        done = int(_recorded(stored, plan.hashes).sum())
    estimate = None
    rate = read_throughput(path) if path is not None else None
    if rate and rate.get("seconds"):
        per_second = rate["evaluations"] / rate["seconds"] * max(actors, 1) / max(rate.get("actors") or 1, 1)
        estimate = {"evaluations_per_second": round(per_second, 2), "seconds": round((plan.count - done) / per_second),
                    "measured": rate}
    return {"evaluations": plan.count, "already_recorded": done, "to_run": plan.count - done,
            "tokens_needed": sorted(plan.tokens), "tokens_missing": missing_tokens(spec, plan.tokens),
            "estimate": estimate}
