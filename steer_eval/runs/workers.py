"""Where evaluations run: one long-lived backend in this process, or one per Ray actor, supervised.

Ray lives only here (and is imported only when actors are asked for). Each actor builds its backend once (one
engine per actor) and serves many chunks. A worker that dies (process killed, node lost) costs only the chunks it
had in flight: they go back to the queue, Ray restarts the actor, and the run goes on; a chunk that fails
`MAX_CHUNK_FAILURES` times ends the run naming the chunk and the cause. A problem the user can fix (a bad model,
a missing token) is raised as itself, whether it happened in an actor's start-up or in a chunk.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import replace
from typing import Callable, Iterator, Sequence

from steer_eval.steering.assembly import AssembledPrompt
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.errors import RunMismatchError, UserError, WorkerFailedError
from steer_eval.backends.generation import GenerationConfig, split_reasoning
from steer_eval.scoring.quality import measure
from steer_eval.runs.records import Record, Request, encode_records
from steer_eval.scoring.verdict import scorer_spec, verify

logger = logging.getLogger(__name__)

MAX_CHUNK_FAILURES = 3  # a chunk whose worker died this often is not retried again
WORKER_RESTART_TIMEOUT = 900  # seconds a dead worker may take to come back (a vLLM engine starts in minutes)
Chunk = tuple[int, list[Request]]
Sink = Callable[[list[Request], bytes], None]  # a chunk and its records as JSONL


def evaluate(backend, requests: Sequence[Request], config: GenerationConfig, run_id: str = "") -> list[Record]:
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
    def count_tokens(text: str) -> int:
        return len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])

    records = []
    for request, prompt, response in zip(requests, assembled, responses):
        reasoning, answer = split_reasoning(response)
        quality = measure(answer, count_tokens, config.max_new_tokens)
        if reasoning is not None and "tokens" in quality:  # the limit counts the reasoning's tokens too
            quality["hit_limit"] = count_tokens(response) >= config.max_new_tokens
        records.append(Record(request, answer, verify(request.behaviors, answer).per_behavior,
                              scorer_spec(request.behaviors), sample_config(config, request.sample).as_dict(),
                              prompt.token_names, prompt.instruction, backend.name, backend.model_spec, run_id,
                              quality, reasoning=reasoning))
    return records


def sample_config(config: GenerationConfig, sample: int) -> GenerationConfig:
    return config if sample == 0 else replace(config, seed=config.seed + sample)


class GridWorker:
    """One backend, built once, serving chunks of requests (and BackendPool's generate/loglikelihood).

    On Ray, a start-up failure is kept and raised by every call, so the driver sees the error itself rather than
    Ray's ActorDiedError, and Ray does not restart an actor that can never start."""

    def __init__(self, spec: BackendSpec, backend=None, *, keep_startup_error: bool = False):
        self.startup_error: Exception | None = None
        try:
            self.backend = backend or spec.build()
        except Exception as error:  # noqa: BLE001 - re-raised by every call below
            if not keep_startup_error:
                raise
            self.startup_error = error

    def _ready(self):
        if self.startup_error is not None:
            raise self.startup_error
        return self.backend

    def fingerprint(self) -> str:
        return self._ready().fingerprint

    def node(self) -> str:
        """The Ray node this worker runs on (after a restart it may be another one)."""
        import ray
        self._ready()
        return ray.get_runtime_context().get_node_id()

    def run(self, requests: Sequence[Request], config: GenerationConfig, run_id: str) -> bytes:
        """The requests' records as JSONL: encoded here, in parallel across workers, so the writer only appends."""
        backend = self._ready()
        if hasattr(backend, "evaluate"):  # the simulated backend makes its records itself
            return encode_records(backend.evaluate(requests, config, run_id))
        return encode_records(evaluate(backend, requests, config, run_id))

    def describe(self) -> tuple[str, object]:
        return self._ready().name, self._ready().tokenizer

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig) -> list[str]:
        return self._ready().generate(prompts, config, progress=False)

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]]) -> list[tuple[float, bool]]:
        return self._ready().loglikelihood(requests, progress=False)

    def shutdown(self) -> None:
        if self.startup_error is None:
            self.backend.shutdown()


class InProcessWorkers:
    def __init__(self, spec: BackendSpec, backend=None):
        self.worker = GridWorker(spec, backend)
        self.owned = backend is None
        self.per_node: Counter[str] = Counter()

    def fingerprint(self) -> str:
        return self.worker.fingerprint()

    def run(self, chunks: Iterator[Chunk], config: GenerationConfig, run_id: str, sink: Sink) -> None:
        for _, chunk in chunks:
            sink(chunk, self.worker.run(chunk, config, run_id))
            self.per_node["this process"] += len(chunk)

    def close(self) -> None:
        if self.owned:
            self.worker.shutdown()


_started_here: list[bool] = []  # non-empty while this process runs the private Ray instance it started


def connect(address: str | None) -> None:
    """Attach to the cluster at `address`, or start a private Ray instance when none is given."""
    import ray

    if ray.is_initialized():
        return
    # "local" always starts a private instance; None would attach to any cluster recorded in Ray's temp folder,
    # even a dead one, and hang. RAY_ADDRESS is explicit (`ray job submit` sets it for the job's driver).
    address = address or os.environ.get("RAY_ADDRESS") or None
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address or "local", log_to_driver=False, include_dashboard=False if not address else None)
        if not address:
            _started_here.append(True)
        if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
            # Ray's core replaces the SIGTERM handler with one that aborts the driver, orphaning the workers'
            # engines; the caller's handler (the CLI's: clean shutdown, as on Ctrl-C) is put back.
            signal.signal(signal.SIGTERM, on_sigterm)
    except Exception as error:  # noqa: BLE001 - Ray raises several types (ConnectionError, AuthenticationError, ...)
        if not address:
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot connect to the Ray cluster at {address!r} ({first_line[:300]}); check the address "
                        "(host:port of `ray start --head`), and for a cluster with token authentication (Ray's "
                        "default) export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the cluster's token file> "
                        "before running (docs/grids.md, 'Running on a Ray cluster')") from None


def _stop(workers: list) -> None:
    """Kill the actors; a private Ray instance (started by `connect`) goes with them."""
    import ray

    for worker in workers:
        ray.kill(worker, no_restart=True)
    if _started_here:
        ray.shutdown()
        _started_here.clear()


def _unwrap(error: Exception) -> Exception:
    """The exception raised inside an actor, as itself (a UserError stays a UserError)."""
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError) and isinstance(error.cause, Exception):
        return error.cause
    return error


def start_actors(spec: BackendSpec, actors: int, address: str | None) -> list:
    import ray

    connect(address)
    gpus = 0
    if not spec.simulated:
        import torch
        gpus = 1 if (ray.cluster_resources().get("GPU", 0) > 0 or torch.cuda.is_available()) else 0
        gpus *= int(spec.options.get("tensor_parallel_size", 1))
    # Ray restarts an actor whose process died; the chunks it had in flight are requeued by RayWorkers.run.
    # A simulated worker mostly waits, so it takes a fraction of a CPU; a model takes a whole one (or its GPUs).
    cpus = 0 if gpus else (0.25 if spec.simulated else 1)
    _check_capacity(actors, cpus, gpus, address)
    # Ray gives a CPU actor OMP_NUM_THREADS=1, and vLLM's CPU backend then pins that thread to core 0 in every
    # actor of a node: two engines would share one core. Let the OS place them instead (unless the user chose).
    env = {} if gpus or "VLLM_CPU_OMP_THREADS_BIND" in os.environ else {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    Worker = ray.remote(num_gpus=gpus, num_cpus=cpus, max_restarts=-1,
                        runtime_env={"env_vars": env} if env else None)(GridWorker)
    workers = [Worker.remote(spec, keep_startup_error=True) for _ in range(actors)]
    try:
        fingerprints = set(ray.get([worker.fingerprint.remote() for worker in workers]))
    except Exception as error:
        for worker in workers:
            ray.kill(worker, no_restart=True)
        raise _unwrap(error) from None
    if len(fingerprints) != 1:
        raise RunMismatchError(f"the Ray workers loaded different models ({', '.join(sorted(fingerprints))}); "
                               "give every node the same model files")
    return workers


def _check_capacity(actors: int, cpus: float, gpus: int, address: str | None) -> None:
    """Refuse at once what the cluster can never place (Ray would wait forever for the missing resources)."""
    import ray

    have = ray.cluster_resources()
    for name, each in (("GPU", gpus), ("CPU", cpus)):
        if each and actors * each > have.get(name, 0):
            where = f"the Ray cluster at {address}" if address else "this machine's private Ray instance"
            raise UserError(f"--actors {actors} needs {actors * each:g} {name}s ({each:g} per actor), but {where} has "
                            f"{have.get(name, 0):g}; use --actors {int(have.get(name, 0) // each)} or fewer, or add "
                            "nodes to the cluster")


def _lost_worker_errors() -> tuple[type[Exception], ...]:
    import ray.exceptions as errors
    names = ("RayActorError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "NodeDiedError",
             "ActorUnavailableError")
    return tuple(getattr(errors, name) for name in names if hasattr(errors, name))


class RayWorkers:
    def __init__(self, spec: BackendSpec, actors: int, address: str | None):
        import ray

        self.workers = start_actors(spec, actors, address)
        self.node_of = dict(zip(self.workers, ray.get([worker.node.remote() for worker in self.workers])))
        self.per_node: Counter[str] = Counter()  # evaluations delivered, by Ray node id

    def fingerprint(self) -> str:
        import ray
        return ray.get(self.workers[0].fingerprint.remote())

    def run(self, chunks: Iterator[Chunk], config: GenerationConfig, run_id: str, sink: Sink) -> None:
        import ray

        lost = _lost_worker_errors()
        retry: deque[Chunk] = deque()
        failures: Counter[int] = Counter()
        pending: dict = {}  # object ref -> (worker, chunk), or (worker, None) for a probe of a restarting worker
        down_since: dict = {}  # worker -> when it was found dead

        def submit(worker) -> None:
            chunk = retry.popleft() if retry else next(chunks, None)
            if chunk is not None:
                pending[worker.run.remote(chunk[1], config, run_id)] = (worker, chunk)

        probes_due: dict = {}  # worker -> when to ask a restarting worker again whether it is back

        def probe(worker) -> None:
            if time.monotonic() - down_since[worker] > WORKER_RESTART_TIMEOUT:
                raise WorkerFailedError(f"a Ray worker has not come back within {WORKER_RESTART_TIMEOUT} s after "
                                        "dying; the records written so far are kept: rerun the same command to resume")
            pending[worker.node.remote()] = (worker, None)

        # Two chunks in flight per actor keep each engine busy while the driver writes results.
        for worker in self.workers * 2:
            submit(worker)
        while pending or probes_due:
            for worker, due in list(probes_due.items()):
                if due <= time.monotonic():
                    del probes_due[worker]
                    probe(worker)
            if not pending:  # every worker is restarting
                time.sleep(0.5)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5 if probes_due else None)
            if not ready:
                continue
            worker, chunk = pending.pop(ready[0])
            try:
                data = ray.get(ready[0])
            except lost as error:
                down_since.setdefault(worker, time.monotonic())
                if chunk is None:  # still restarting: ask again in a second, meanwhile serve the others
                    probes_due[worker] = time.monotonic() + 1
                    continue
                number, requests = chunk
                retry.append(chunk)
                # Chunks only go to workers that answered, so the chunk was running when its worker died.
                failures[number] += 1
                logger.warning(f"a worker died ({type(error).__name__}); chunk {number} "
                               f"({len(requests)} evaluations) goes back to the queue")
                if failures[number] >= MAX_CHUNK_FAILURES:
                    cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    raise WorkerFailedError(
                        f"chunk {number} ({len(requests)} evaluations, first {requests[0].key}) lost its worker "
                        f"{failures[number]} times, last: {type(error).__name__}: {cause[:300]}; its records are "
                        "not written, everything else is: rerun the same command to resume") from None
                if not any(w is worker for w, _ in pending.values()):
                    probe(worker)  # one probe per worker, once none of its tasks is still out
                busy = [w for w, _ in pending.values()]
                for idle in self.workers:  # a healthy worker that ran out of work takes the chunk now
                    if retry and idle not in down_since and not any(w is idle for w in busy):
                        submit(idle)
                continue
            except Exception as error:  # noqa: BLE001 - the actor's own exception, unwrapped
                raise _unwrap(error) from None
            if chunk is None:  # a restarted worker answered: give it work again
                down_since.pop(worker, None)
                self.node_of[worker] = data
                submit(worker)
                submit(worker)
                continue
            sink(chunk[1], data)
            self.per_node[self.node_of[worker]] += len(chunk[1])
            submit(worker)

    def close(self) -> None:
        _stop(self.workers)


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

        self.workers = start_actors(spec, actors, address)
        self.name, self.tokenizer = ray.get(self.workers[0].describe.remote())

    def _map(self, method: str, items: Sequence, *args) -> list:
        import ray

        shards = _shards(list(items), len(self.workers))
        futures = [getattr(worker, method).remote(shard, *args) for worker, shard in zip(self.workers, shards) if shard]
        try:
            return [result for part in ray.get(futures) for result in part]
        except Exception as error:
            raise _unwrap(error) from None

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        return self._map("generate", prompts, config)

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]],
                      progress: bool = True) -> list[tuple[float, bool]]:
        return self._map("loglikelihood", requests)

    def shutdown(self) -> None:
        _stop(self.workers)
        self.workers = []
