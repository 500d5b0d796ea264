"""Generation settings shared by every backend, the runner and the command line (no torch import: the CLI reads
the defaults from here)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from steer_eval.errors import SettingError

DEFAULT_MAX_NEW_TOKENS = 256  # as in the paper: greedy decoding, up to 256 new tokens
DEFAULT_HF_BATCH_SIZE = 16  # prompts per transformers generate() call


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 = greedy, as in the paper
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise SettingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SettingError(f"temperature must be >= 0, got {self.temperature}")

    def as_dict(self) -> dict:
        """JSON-ready (lists, not tuples), so a record read back from disk equals the one written."""
        return {**asdict(self), "stop": list(self.stop)}


REASONING_OPEN, REASONING_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning block or None, the answer). Reasoning models (Qwen3 with thinking on, R1-style) write a
    <think>...</think> block before the answer; only the answer is judged. A block never closed (cut by the token
    limit) leaves no answer. Some templates open the block in the prompt, so the reply holds only its end."""
    head, closed, answer = text.partition(REASONING_CLOSE)
    if closed:
        return head.strip().removeprefix(REASONING_OPEN).strip(), answer.lstrip()
    if text.lstrip().startswith(REASONING_OPEN):
        return text.lstrip().removeprefix(REASONING_OPEN).strip(), ""
    return None, text


def chat_template_options(given: str | dict | None, enable_thinking: bool | str | None = None) -> dict:
    """Keyword arguments for the chat template, from a JSON object (command line, lm-eval model_args) or a dict,
    plus the `enable_thinking` switch reasoning models' templates read (Qwen3 thinks unless it is false)."""
    if isinstance(given, str):
        try:
            given = json.loads(given) if given.strip() else {}
        except json.JSONDecodeError as error:
            raise SettingError(f"chat template options must be a JSON object, e.g. '{{\"enable_thinking\": false}}' "
                               f"({error})") from None
    if given is not None and not isinstance(given, dict):
        raise SettingError(f"chat template options must be a JSON object, got {type(given).__name__}")
    options = dict(given or {})
    if enable_thinking is not None:
        if isinstance(enable_thinking, str) and enable_thinking.lower() in ("true", "false"):
            enable_thinking = enable_thinking.lower() == "true"
        if not isinstance(enable_thinking, bool):
            raise SettingError(f"enable_thinking must be true or false, got {enable_thinking!r}")
        options["enable_thinking"] = enable_thinking
    return options
