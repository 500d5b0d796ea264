"""What every backend shares: the token store bound to a model, input checks, and the interface."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch

from steer_eval.steering.activation import unsupported_backend
from steer_eval.steering.assembly import AssembledPrompt, assemble
from steer_eval.steering.embedding_space import InputEmbeddings
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import model_label, weights_fingerprint
from steer_eval.steering.tokens import ModelIdentity, TokenError, TokenStore, default_tokens_dir, load_vectors


def check_vector(name: str, vector: torch.Tensor, hidden_size: int) -> None:
    """A steering vector must be finite and of the model's hidden size: a NaN would silently yield empty text."""
    if vector.shape != (hidden_size,) or not vector.dtype.is_floating_point:
        raise TokenError(f"steering vector {name!r} must be a float tensor of shape ({hidden_size},), "
                         f"got {vector.dtype} {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise TokenError(f"steering vector {name!r} contains NaN or inf; retrain it or load another token")


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


class SteeringBackend(ABC):
    """A model with its tokenizer, input-embedding matrix and steering tokens; subclasses generate and score."""

    name = "base"
    activation_steering = False  # can add caa/prosv vectors inside the model (the HF backend's hooks)

    def __init__(self, model_spec: str, tokenizer, embeddings: InputEmbeddings, tokens_dir: str | Path | None,
                 chat_template_kwargs: dict | None = None):
        self.model_spec = model_spec
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})  # a run setting: part of the run identity
        self.embeddings = embeddings  # prompt rows as the model's embedding module makes them
        self.embedding_weight = embeddings.weight
        self.identity = ModelIdentity.of(model_label(model_spec), embeddings.weight)
        self.store = TokenStore(tokens_dir or default_tokens_dir(model_label(model_spec)))
        self._vectors: dict[str, torch.Tensor] = {}

    def assemble(self, prompt: str, behaviors: Sequence[str], **options) -> AssembledPrompt:
        return assemble(prompt, behaviors, self.tokenizer, chat_template_kwargs=self.chat_template_kwargs, **options)

    def vectors_for(self, prompts: Sequence[AssembledPrompt]) -> dict[str, torch.Tensor]:
        refusal = unsupported_backend({p.control_method for p in prompts if p.activations},
                                      "hf" if self.activation_steering else self.name, "use the HF backend")
        if refusal:
            raise TokenError(refusal)
        names = {name for p in prompts for name in p.token_names}
        missing = sorted(names - self._vectors.keys())
        if missing:
            loaded = load_vectors(self.store, missing, self.identity)
            for name, vector in loaded.items():
                check_vector(name, vector, self.identity.hidden_size)
            self._vectors.update(loaded)
        return {name: self._vectors[name] for name in names}

    def add_vectors(self, vectors: dict[str, torch.Tensor]) -> None:
        """Use these vectors (e.g. fresh from training) instead of the store's, checked for shape."""
        for name, vector in vectors.items():
            check_vector(name, vector, self.identity.hidden_size)
            self._vectors[name] = vector.detach().float().cpu()

    @property
    def fingerprint(self) -> str:
        """The loaded model as a run identity sees it: all of its files, its input embeddings and the dtype it
        runs in."""
        return (f"{weights_fingerprint(self.model_spec)}/{self.identity.fingerprint}/"
                f"{str(self.dtype).removeprefix('torch.')}")

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in."""

    @abstractmethod
    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        """One response per assembled prompt, in order."""

    @abstractmethod
    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]],
                      progress: bool = True) -> list[tuple[float, bool]]:
        """(log p(continuation | prompt), whether the continuation is the greedy one) per request."""

    def shutdown(self) -> None:
        """Free what the backend holds (an engine, GPU memory); the default holds nothing beyond Python objects."""
