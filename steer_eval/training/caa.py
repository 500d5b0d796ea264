"""CAA vectors: per behaviour, the mean difference of a layer's activations with and without the instruction.

Contrastive pairs come from prompts (the bundled train split by default): the prompt with one of the behaviour's
instruction paraphrases (seeded per prompt, as `text` control reads it) against the same plain prompt, both in the
chat template. The activation is taken at the last prompt token, where the two inputs end alike and the model is
about to answer. Every layer comes out of one pass, so a layer sweep costs no extra forward passes.

The vectors export to the file lm-eval's stock `steered` model reads (`--model steered --model_args
pretrained=...,steer_path=...`), so the same numbers can be reproduced outside this package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from steer_eval.steering.activation import EVERY_POSITION, Intervention, last_position_activations, vector_name
from steer_eval.steering.assembly import assemble
from steer_eval.errors import UserError
from steer_eval.steering.tokens import ModelIdentity, SteeringToken


def contrastive_means(model, tokenizer, prompts: Sequence[str], behavior: str, layers: Sequence[int],
                      batch_size: int = 32, paraphrase_seed: int = 0) -> dict[int, torch.Tensor]:
    """layer -> mean over prompts of (activation with the instruction - activation without), float32."""
    if not prompts:
        raise UserError(f"CAA for {behavior} needs at least one prompt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in layers}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        with_instruction = [assemble(p, [behavior], tokenizer, control_method="text",
                                     paraphrase_seed=paraphrase_seed).input_ids for p in chunk]
        plain = [assemble(p, [], tokenizer, control_method="text").input_ids for p in chunk]
        positive = last_position_activations(model, with_instruction, layers, pad)
        negative = last_position_activations(model, plain, layers, pad)
        for layer in layers:
            sums[layer] += (positive[layer] - negative[layer]).double().sum(0).cpu()
    return {layer: (total / len(prompts)).float() for layer, total in sums.items()}


def caa_token(behavior: str, vector: torch.Tensor, layer: int, multiplier: float, identity: ModelIdentity,
              config: dict | None = None) -> SteeringToken:
    return SteeringToken(vector_name("caa", behavior), vector.detach().float().cpu(), (behavior,), identity,
                         dict(config or {}), Intervention("caa", layer, EVERY_POSITION, float(multiplier)))


def steered_config(tokens: Sequence[SteeringToken]) -> dict:
    """lm-eval `steered` content for these vectors added together: {"layers.<L>": {"steering_vector", ...}}.

    The factor is folded into the vector (coefficient 1.0), so lm-eval casts the very sum this package adds."""
    config: dict[str, dict] = {}
    for token in tokens:
        intervention = token.intervention
        if intervention is None or intervention.positions != EVERY_POSITION:
            what = "a steering token" if intervention is None else f"a {intervention.kind} vector added at the " \
                                                                   f"last {intervention.positions} prompt positions"
            raise UserError(f"{token.name} is {what}; lm-eval's steered model adds a vector at every position, "
                            "so only CAA vectors export to it")
        entry = config.setdefault(f"layers.{intervention.layer}", {
            "steering_vector": torch.zeros_like(token.vector, dtype=torch.float32), "steering_coefficient": 1.0,
            "action": "add", "bias": None, "head_index": None})
        entry["steering_vector"] = entry["steering_vector"] + intervention.factor * token.vector.float()
    return config


def export_steered(tokens: Sequence[SteeringToken], path: str | Path) -> Path:
    """Write the steered file (plain tensors, floats and strings: loadable with torch.load(weights_only=True))."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise UserError(f"{path}: lm-eval's steered model reads .pt or .pth files; name the output e.g. steer.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(steered_config(tokens), path)
    return path
