"""The behaviour registry: every behaviour as data (category, verifier, paraphrases, conflicts)."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Iterable, Iterator

from steer_eval.errors import UserError

AND_TOKEN = "<and>"

CATEGORIES = ("language", "length", "format", "structure", "extra")
UNSEEN = frozenset({"german", "title_case", "words_70_90", "sentences_3"})


@dataclass(frozen=True)
class Behavior:
    id: str
    category: str
    verifier: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    unseen: bool = False
    description: str = ""

    @property
    def instructions(self) -> tuple[str, ...]:
        return _instructions()[self.id]

    def spec(self) -> dict:
        """What a result records about how this behaviour was judged."""
        return {"id": self.id, "category": self.category, "verifier": self.verifier, "params": self.params}


def _language(bid: str, code: str, name: str) -> Behavior:
    return Behavior(bid, "language", "is_language", {"lang": code}, bid in UNSEEN, f"respond in {name}")


def _words(low: int, high: int) -> Behavior:
    bid = f"words_{low}_{high}"
    return Behavior(bid, "length", "words_in_range", {"low": low, "high": high}, bid in UNSEEN,
                    f"answer in {low}-{high} words")


def _sentences(n: int) -> Behavior:
    bid = f"sentences_{n}"
    return Behavior(bid, "structure", "has_sentences", {"n": n}, bid in UNSEEN, f"exactly {n} sentence(s)")


_ALL: tuple[Behavior, ...] = (
    _language("german", "de", "German"),
    _language("spanish", "es", "Spanish"),
    _language("french", "fr", "French"),
    _language("italian", "it", "Italian"),
    _language("portuguese", "pt", "Portuguese"),
    _words(10, 50), _words(50, 70), _words(70, 90), _words(90, 120),
    Behavior("lowercase", "format", "is_lowercase", description="only lowercase letters"),
    Behavior("uppercase", "format", "is_uppercase", description="only uppercase letters"),
    Behavior("title_case", "format", "is_title_case", unseen=True, description="every word capitalised"),
    *(_sentences(n) for n in range(1, 6)),
    Behavior("json", "extra", "is_json_answer", description='a JSON object {"answer": ...} only'),
)

BEHAVIORS: dict[str, Behavior] = {b.id: b for b in _ALL}

# Pairs across categories that still cannot hold together; pairs within one category never compose.
_CROSS_CATEGORY_CONFLICTS = frozenset(
    frozenset(("json", f"sentences_{n}")) for n in range(1, 6)
)


class BehaviorError(UserError, ValueError):
    """A user-facing problem with the behaviours asked for."""


@cache
def _instructions() -> dict[str, tuple[str, ...]]:
    text = resources.files("steer_eval.data").joinpath("instructions.json").read_text(encoding="utf-8")
    return {bid: tuple(paraphrases) for bid, paraphrases in json.loads(text).items()}


def get_behavior(behavior_id: str) -> Behavior:
    try:
        return BEHAVIORS[behavior_id]
    except KeyError:
        raise BehaviorError(
            f"unknown behaviour {behavior_id!r}; known behaviours: {', '.join(BEHAVIORS)}"
        ) from None


def conflict(a: Behavior, b: Behavior) -> str | None:
    """Why a and b cannot be asked for together, or None when they can."""
    if a.id == b.id:
        return f"{a.id!r} is listed twice"
    if a.category == b.category:
        return f"{a.id!r} and {b.id!r} are both {a.category} behaviours"
    if frozenset((a.id, b.id)) in _CROSS_CATEGORY_CONFLICTS:
        return f"{a.id!r} and {b.id!r} contradict each other"
    return None


def resolve(behavior_ids: Iterable[str]) -> list[Behavior]:
    """Look up an ordered list of behaviour ids; raise BehaviorError on unknown ids or conflicts."""
    behaviors = [get_behavior(bid) for bid in behavior_ids]
    for a, b in itertools.combinations(behaviors, 2):
        reason = conflict(a, b)
        if reason:
            raise BehaviorError(f"conflicting behaviours: {reason}; choose at most one per category")
    return behaviors


def compatible_combinations(k: int, behaviors: Iterable[Behavior] = _ALL) -> Iterator[tuple[Behavior, ...]]:
    """Every unordered k-combination of mutually compatible behaviours, in registry order."""
    for combo in itertools.combinations(tuple(behaviors), k):
        if all(conflict(a, b) is None for a, b in itertools.combinations(combo, 2)):
            yield combo


def is_seen_combination(behaviors: Iterable[Behavior]) -> bool:
    """Seen = every behaviour was available when <and> was trained (none held out)."""
    return not any(b.unseen for b in behaviors)


def seen_behaviors() -> list[Behavior]:
    return [b for b in _ALL if not b.unseen]
