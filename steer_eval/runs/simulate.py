"""A backend without a model: deterministic fake responses and verdicts, for exercising the runner at scale.

It runs through the real scheduler, writer, resume and summary, so bookkeeping speed, memory and crash safety
can be measured on a laptop; `delay` (seconds per evaluation) stands in for a model's generation time.
Its records say `backend: simulate` and carry a scorer named `simulate`, so they can never pass for real ones.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from typing import Sequence

from steer_eval.errors import SettingError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.runs.records import Record, Request

SIMULATED_SCORER = {"scorer": "steer_eval.backends.simulate", "version": 1}
FINGERPRINT = "simulated"


def _coins(count: int, *parts: object) -> list[float]:
    """`count` numbers in [0, 1), fixed by `parts`."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8 * count).digest()
    return [int.from_bytes(digest[8 * i:8 * i + 8], "big") / 2**64 for i in range(count)]


@functools.lru_cache(maxsize=None)
def _follow_rate(seed: int, behavior: str, control_method: str) -> float:
    return 0.35 + 0.5 * _coins(1, seed, behavior, control_method)[0]


class SimulatedBackend:
    """Follows a behaviour with a fixed probability per (behaviour, control method), shifted by its position,
    so simulated grids show accuracy and order effects like real ones."""

    name = "simulate"
    fingerprint = FINGERPRINT

    def __init__(self, model_spec: str = "simulated", tokens_dir=None, *, delay: float = 0.0, seed: int = 0,
                 crash_on: str | None = None):
        if delay < 0:
            raise SettingError(f"the simulate backend's delay must be >= 0 seconds, got {delay}")
        self.model_spec = model_spec
        self.delay = float(delay)
        self.seed = seed
        self.crash_on = crash_on  # a prompt id whose evaluation kills the worker's process (tests fault handling)

    def evaluate(self, requests: Sequence[Request], config: GenerationConfig, run_id: str) -> list[Record]:
        if self.delay:
            time.sleep(self.delay * len(requests))
        if self.crash_on is not None and any(r.prompt_id == self.crash_on for r in requests):
            os._exit(1)
        generation = config.as_dict()
        records = []
        for request in requests:
            coins = _coins(len(request.behaviors) + 1, self.seed, request.key)
            verdicts = {behavior: coin < _follow_rate(self.seed, behavior, request.control_method) - 0.05 * position
                        for position, (behavior, coin) in enumerate(zip(request.behaviors, coins))}
            records.append(Record(request, f"simulated response {coins[-1]:.6f} to {request.prompt_id}", verdicts,
                                  SIMULATED_SCORER, generation, (), None, self.name, self.model_spec, run_id))
        return records

    def shutdown(self) -> None:
        pass
