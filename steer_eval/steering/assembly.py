"""Prompt assembly: the one function that turns (prompt, behaviours, control method, mode) into model input.

Steering tokens sit right after the user's prompt inside the user turn of the chat template:
[E_prompt, e_b1, e_<and>, e_b2]. Every backend and the trainer build their inputs here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from steer_eval.steering.activation import ACTIVATION_METHODS, vector_name
from steer_eval.scoring.behaviors import AND_TOKEN, Behavior, BehaviorError, resolve

TOKEN_METHODS = ("steering", "hybrid")  # steering tokens in the input; the only methods a mode applies to
CONTROL_METHODS = ("steering", "text", "hybrid", *ACTIVATION_METHODS)
MODES = ("composition", "concatenation", "native_and")
if TYPE_CHECKING:
    import torch

    from steer_eval.steering.embedding_space import InputEmbeddings

_MARKER = "\uE000STEER\uE000"  # a private-use sentinel no prompt contains; split point of the rendered template


@dataclass(frozen=True)
class AssembledPrompt:
    """Token ids plus the positions where steering vectors replace the embedding of a placeholder id."""
    input_ids: tuple[int, ...]
    slots: tuple[tuple[int, str], ...]  # (position, steering-token name), in order
    prompt: str
    behaviors: tuple[str, ...]
    control_method: str
    mode: str
    instruction: str | None  # the instruction text shown to the model, if any
    activations: tuple[str, ...] = ()  # activation vectors added inside the model (caa/prosv), e.g. 'caa/german'

    @property
    def token_names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.slots)

    @property
    def vector_names(self) -> tuple[str, ...]:
        """Every stored vector this input uses: steering tokens in slot order, then activation vectors."""
        return self.token_names + self.activations

    def describe(self) -> dict:
        return {"behaviors": list(self.behaviors), "control_method": self.control_method, "mode": self.mode,
                "steering": list(self.vector_names), "instruction": self.instruction}


def uses_mode(control_method: str) -> bool:
    """Only steering tokens are joined in a mode; instructions and activation vectors combine one way each."""
    return control_method in TOKEN_METHODS


def vector_names(behaviors: Sequence[str], control_method: str, mode: str) -> list[str]:
    """The stored vectors a setting needs: its steering tokens (with <and>), or its activation vectors."""
    if control_method in ACTIVATION_METHODS:
        return [vector_name(control_method, b) for b in behaviors]
    if control_method in TOKEN_METHODS:
        return [item for item in steering_sequence(behaviors, mode) if not item.startswith(" ")]
    return []


def steering_sequence(behaviors: Sequence[str], mode: str) -> list[str]:
    """The slot/word sequence after the prompt, e.g. ['german', '<and>', 'words_10_50'] or [..., ' and', ...]."""
    sequence: list[str] = []
    for index, behavior in enumerate(behaviors):
        if index:
            if mode == "composition":
                sequence.append(AND_TOKEN)
            elif mode == "native_and":
                sequence.append(" and")  # the vocabulary's own word, tokenised as text
        sequence.append(behavior)
    return sequence


FIRST_INSTRUCTION = -1  # a paraphrase seed meaning "each behaviour's first (canonical) instruction"


def choose_paraphrase(behavior: Behavior, prompt: str, seed: int) -> str:
    """A paraphrase picked by hashing (seed, prompt, behaviour): reproducible and independent of call order."""
    if seed == FIRST_INSTRUCTION:
        return behavior.instructions[0]
    digest = hashlib.sha256(f"{seed}\x00{prompt}\x00{behavior.id}".encode()).digest()
    return behavior.instructions[int.from_bytes(digest[:8], "big") % len(behavior.instructions)]


def join_instructions(instructions: Sequence[str]) -> str:
    """'Respond in German' + 'Keep it short' -> 'Respond in German and keep it short.'"""
    parts = [text if i == 0 else text[:1].lower() + text[1:] for i, text in enumerate(instructions)]
    return " and ".join(parts) + "."


def parse_steering(items: Sequence[str], mode: str | None) -> tuple[list[str], str]:
    """['german', '<and>', 'words_10_50'] -> (['german', 'words_10_50'], 'composition')."""
    behaviors = [item for item in items if item != AND_TOKEN]
    has_and = AND_TOKEN in items
    if has_and:
        expected = [x for b in behaviors for x in (AND_TOKEN, b)][1:]
        if list(items) != expected:
            raise BehaviorError(f"put {AND_TOKEN} between every two behaviours, e.g. german {AND_TOKEN} words_10_50")
        if mode not in (None, "composition"):
            raise BehaviorError(f"{AND_TOKEN} in --steering means mode composition, not {mode}")
        return behaviors, "composition"
    return behaviors, mode or ("concatenation" if len(behaviors) > 1 else "composition")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise BehaviorError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def assemble(prompt: str, behaviors: Sequence[str], tokenizer, *, control_method: str = "steering",
             mode: str = "composition", paraphrase_seed: int = 0,
             instructions: Sequence[str] | None = None, system_prompt: str | None = None,
             chat_template_kwargs: Mapping[str, object] | None = None) -> AssembledPrompt:
    """Build the model input for one prompt.

    `instructions` overrides the paraphrase choice (one per behaviour); otherwise `paraphrase_seed` picks them.
    Text instructions follow the prompt after a blank line; in hybrid, the steering tokens come first. CAA and
    PrOSV read the plain prompt; the backend adds their vectors inside the model. `chat_template_kwargs` go to
    the template (e.g. {"enable_thinking": False} for Qwen3, whose template thinks by default).
    """
    _check_choice("control method", control_method, CONTROL_METHODS)
    _check_choice("mode", mode, MODES)
    resolved = resolve(behaviors)
    instruction = None
    if control_method in ("text", "hybrid") and resolved:
        if instructions is None:
            instructions = [choose_paraphrase(b, prompt, paraphrase_seed) for b in resolved]
        if len(instructions) != len(resolved):
            raise BehaviorError(f"{len(instructions)} instructions given for {len(resolved)} behaviours")
        instruction = join_instructions(instructions)

    content = prompt + _MARKER + (f"\n\n{instruction}" if instruction else "")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}]
    if getattr(tokenizer, "chat_template", None) is None:
        raise BehaviorError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat "
                            "template; steer-eval puts steering tokens inside the user turn of a chat template, so "
                            "use a model that has one (e.g. the instruction-tuned variant)")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(chat_template_kwargs or {}))
    before, after = rendered.split(_MARKER)

    ids = list(tokenizer.encode(before, add_special_tokens=False))
    slots: list[tuple[int, str]] = []
    if control_method in TOKEN_METHODS:
        placeholder = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        for item in steering_sequence([b.id for b in resolved], mode):
            if item.startswith(" "):
                ids.extend(tokenizer.encode(item, add_special_tokens=False))
            else:
                slots.append((len(ids), item))
                ids.append(placeholder)
    ids.extend(tokenizer.encode(after, add_special_tokens=False))
    activations = tuple(vector_names([b.id for b in resolved], control_method, mode)
                        if control_method in ACTIVATION_METHODS else ())
    return AssembledPrompt(tuple(ids), tuple(slots), prompt, tuple(b.id for b in resolved),
                           control_method, mode, instruction, activations)


def embed(assembled: AssembledPrompt, embeddings: "InputEmbeddings",
          vectors: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
    """(seq_len, hidden) inputs_embeds: the ids' rows as the model's embedding module makes them, with each slot
    replaced by its steering vector (embedding_space.py: the space steering vectors live in).

    Differentiable in `vectors` (the trainer passes its parameters here).
    """
    import torch  # here, not at the top: planning a grid needs no torch

    ids = torch.tensor(assembled.input_ids, device=embeddings.device)
    rows = embeddings.rows(ids)
    if not assembled.slots:
        return rows
    missing = [name for name in assembled.token_names if name not in vectors]
    if missing:
        raise KeyError(f"no steering vector for {', '.join(missing)}")
    positions = torch.tensor([pos for pos, _ in assembled.slots], device=embeddings.device)
    replacement = torch.stack([vectors[name].to(embeddings.device, rows.dtype)
                               for name in assembled.token_names])
    return rows.index_put((positions,), replacement)
