"""The steering space: where a steering vector lives, the same for every model family.

A steering vector is one row of `inputs_embeds` as the model consumes them, that is what the model's
input-embedding module outputs for a token id. For Llama, Qwen, Mistral, Phi-3, OLMo 2 and Granite that is the
weight's row (Granite multiplies by its `embedding_multiplier` later, in the forward, which treats a steering
vector like any other row). Gemma 2 and 3 multiply the row by sqrt(hidden size) inside the module. So:

- prompt rows come from `InputEmbeddings.rows`, which computes exactly what the module computes;
- semantic initialisation averages those rows (the trainer);
- a vLLM spare row holds `spare_row(vector)` = vector / scale, because the engine's own embedding path scales
  every row it looks up, spare rows included.

A module whose output is not the weight's rows times one number (measured, not assumed from the family's name)
cannot be reproduced row by row: such a model is refused in one line, never run with vectors in the wrong space.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from steer_eval.errors import UserError

_PROBE_IDS = 16  # token ids the module is measured on


class UnsupportedModelError(UserError):
    """A model whose input-embedding path steer-eval cannot reproduce."""


@dataclass(frozen=True)
class InputEmbeddings:
    """A model's input-embedding matrix and the factor its embedding module multiplies every row by."""
    weight: torch.Tensor  # (vocab, hidden), as stored in the checkpoint
    scale: float = 1.0

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The module's output for `ids`: the same operation in the same dtype, so the same bits."""
        rows = self.weight[ids]
        return rows if self.scale == 1.0 else rows * torch.tensor(self.scale, dtype=self.weight.dtype)

    def spare_row(self, vector: torch.Tensor) -> torch.Tensor:
        """What to store in an embedding-table row so that the engine's lookup (row * scale) yields `vector`."""
        vector = vector.detach().float().cpu()
        return vector if self.scale == 1.0 else vector / self.scale

    @classmethod
    def of(cls, model) -> "InputEmbeddings":
        """Measured on a loaded transformers model: its embedding module against its weight."""
        module = model.get_input_embeddings()
        family = getattr(model.config, "model_type", type(model).__name__)
        return cls(module.weight, measure_scale(module, family))


def measure_scale(module: torch.nn.Module, family: str) -> float:
    """The one factor with module(ids) == weight[ids] * factor, checked bit for bit; refuses anything else."""
    weight = module.weight
    ids = torch.arange(min(_PROBE_IDS, weight.shape[0]), device=weight.device)
    with torch.no_grad():
        produced, raw = module(ids), weight[ids]
    if produced.shape == raw.shape:
        nonzero = raw != 0
        ratio = (produced[nonzero].double() / raw[nonzero].double()).median().item() if nonzero.any() else 1.0
        scale = torch.tensor(ratio, dtype=weight.dtype).item()  # the module multiplies by a number of its dtype
        if torch.equal(InputEmbeddings(weight, scale).rows(ids), produced):
            return scale
    raise UnsupportedModelError(f"model family {family!r}: its input-embedding module is not a row lookup times one "
                                "number, so steer-eval cannot place a steering vector in its input space and does "
                                "not run it (supported: Llama-, Qwen-, Mistral-, Phi-3-, OLMo-, Granite- and "
                                "Gemma-like models)")


def scale_from_config(model_folder: str | Path) -> float:
    """The factor measured on a one-layer, few-token model built from the folder's config (no weights read): what
    the vLLM backend, which never loads the model in transformers, needs for its spare rows."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_folder)
    text = getattr(config, "get_text_config", lambda: config)()
    small = {"num_hidden_layers": 1, "vocab_size": 2 * _PROBE_IDS, "intermediate_size": 16}
    for name, value in small.items():
        if hasattr(text, name):
            setattr(text, name, value)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, name, None), int) and getattr(text, name) >= text.vocab_size:
            setattr(text, name, None)
    if hasattr(text, "layer_types") and isinstance(text.layer_types, list):
        text.layer_types = text.layer_types[:1]
    try:
        model = AutoModelForCausalLM.from_config(text)
    except Exception as error:  # noqa: BLE001 - any failure means the same: the family cannot be measured
        raise UnsupportedModelError(f"model family {getattr(text, 'model_type', '?')!r} in {model_folder}: cannot "
                                    f"build it to measure its input embeddings ({type(error).__name__}: "
                                    f"{str(error)[:160]})") from None
    return InputEmbeddings.of(model).scale

