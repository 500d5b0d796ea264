"""Generation settings shared by every backend, the runner and the command line (no torch import: the CLI reads
the defaults from here)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from steer_eval.errors import SettingError

DEFAULT_MAX_NEW_TOKENS = 256  # as in the paper: greedy decoding, up to 256 new tokens


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
