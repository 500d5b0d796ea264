"""What every backend shares: generation settings, the token store bound to a model, and input checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from steer_eval.assembly import AssembledPrompt, assemble
from steer_eval.models import model_label
from steer_eval.tokens import ModelIdentity, TokenStore, default_tokens_dir, load_vectors


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy, as in the paper
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def as_dict(self) -> dict:
        """JSON-ready (lists, not tuples), so a record read back from disk equals the one written."""
        return {**asdict(self), "stop": list(self.stop)}


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


class SteeringBackend:
    """A model with its tokenizer, input-embedding matrix and steering tokens; subclasses generate."""

    name = "base"

    def __init__(self, model_spec: str, tokenizer, embedding_weight: torch.Tensor, tokens_dir: str | Path | None):
        self.model_spec = model_spec
        self.tokenizer = tokenizer
        self.embedding_weight = embedding_weight
        self.identity = ModelIdentity.of(model_label(model_spec), embedding_weight)
        self.store = TokenStore(tokens_dir or default_tokens_dir(model_label(model_spec)))
        self._vectors: dict[str, torch.Tensor] = {}

    def assemble(self, prompt: str, behaviors: Sequence[str], **options) -> AssembledPrompt:
        return assemble(prompt, behaviors, self.tokenizer, **options)

    def vectors_for(self, prompts: Sequence[AssembledPrompt]) -> dict[str, torch.Tensor]:
        names = {name for p in prompts for name in p.token_names}
        missing = sorted(names - self._vectors.keys())
        if missing:
            self._vectors.update(load_vectors(self.store, missing, self.identity))
        return {name: self._vectors[name] for name in names}

    def add_vectors(self, vectors: dict[str, torch.Tensor]) -> None:
        """Use these vectors (e.g. fresh from training) instead of the store's, checked for shape."""
        for name, vector in vectors.items():
            if vector.shape != (self.identity.hidden_size,):
                raise ValueError(f"steering vector {name!r} has shape {tuple(vector.shape)}, "
                                 f"expected ({self.identity.hidden_size},)")
            self._vectors[name] = vector.detach().float().cpu()

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        raise NotImplementedError
