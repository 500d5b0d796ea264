"""Data parallelism for the lm-eval model classes: Ray actors that each build ONE backend and keep it alive.

lm-eval's stock vLLM class starts a fresh engine in a Ray task on every call; here each actor loads its model
(or starts its engine) once, and every generate/loglikelihood call splits its prompts across the actors.
This is the only module that uses Ray.
"""
from __future__ import annotations

import importlib
from typing import Sequence

import ray

from steer_eval.assembly import AssembledPrompt
from steer_eval.backends.base import GenerationConfig


class _BackendActor:
    def __init__(self, backend_path: str, kwargs: dict):
        module, _, name = backend_path.partition(":")
        self.backend = getattr(importlib.import_module(module), name)(**kwargs)

    def name(self) -> str:
        return self.backend.name

    def tokenizer(self):
        return self.backend.tokenizer

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig) -> list[str]:
        return self.backend.generate(prompts, config, progress=False)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.backend.loglikelihood(requests)


def _shards(items: Sequence, count: int) -> list[Sequence]:
    """Contiguous, nearly equal slices (so results concatenate back in input order)."""
    size, extra = divmod(len(items), count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < extra))
    return [items[bounds[i]:bounds[i + 1]] for i in range(count)]


class BackendPool:
    """Looks like one backend (generate, loglikelihood, tokenizer, name); runs `size` of them in Ray actors.

    On a GPU machine each actor holds `gpus_per_actor` GPUs (tensor_parallel_size for vLLM); on CPU, one core.
    Starts a local Ray instance unless one is already running (or RAY_ADDRESS points at a cluster).
    """

    def __init__(self, backend_path: str, kwargs: dict, size: int):
        import torch

        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        gpus = int(kwargs.get("tensor_parallel_size", 1)) if torch.cuda.is_available() else 0
        actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus)(_BackendActor)
        self.actors = [actor.remote(backend_path, kwargs) for _ in range(size)]
        self.name = ray.get(self.actors[0].name.remote())
        self.tokenizer = ray.get(self.actors[0].tokenizer.remote())

    def _map(self, method: str, items: Sequence, *args) -> list:
        shards = _shards(list(items), len(self.actors))
        futures = [getattr(actor, method).remote(shard, *args) for actor, shard in zip(self.actors, shards) if shard]
        return [result for part in ray.get(futures) for result in part]

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        return self._map("generate", prompts, config)

    def loglikelihood(self, requests, progress: bool = True) -> list[tuple[float, bool]]:
        return self._map("loglikelihood", requests)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
