"""The one way to build a backend: a picklable spec, so a Ray actor can build the same backend as this process."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from steer_eval.errors import UserError

if TYPE_CHECKING:
    from steer_eval.backends.base import SteeringBackend
    from steer_eval.runs.simulate import SimulatedBackend

BACKENDS = ("hf", "vllm", "simulate")
DEFAULT_CHUNK_SIZE = 64  # requests per call to a backend worker: the most a crash can cost, per worker


@dataclass(frozen=True)
class BackendSpec:
    backend: str  # hf | vllm | simulate (no model: fake responses and verdicts, for testing the runner at scale)
    model: str  # an embedded model name, a Hugging Face id or a local folder
    tokens_dir: str | None = None  # default: the shipped tokens, steer_eval/steering/shipped/<MODEL>/steering_tokens
    options: dict = field(default_factory=dict)  # keyword arguments of HFBackend / VLLMBackend

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    @property
    def dtype(self) -> str:
        return str(self.options.get("dtype", "auto"))

    @property
    def simulated(self) -> bool:
        """No model to load and no steering tokens to check."""
        return self.backend == "simulate"

    def build(self) -> "SteeringBackend | SimulatedBackend":
        if self.simulated:
            from steer_eval.runs.simulate import SimulatedBackend
            return SimulatedBackend(self.model, self.tokens_dir, **self.options)
        if self.backend == "vllm":
            from steer_eval.backends.vllm import VLLMBackend
            return VLLMBackend(self.model, tokens_dir=self.tokens_dir, **self.options)
        from steer_eval.backends.hf import HFBackend
        return HFBackend(self.model, tokens_dir=self.tokens_dir, **self.options)
