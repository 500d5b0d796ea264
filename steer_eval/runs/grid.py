"""The evaluation grid as data: every order of every compatible combination, for each prompt and setting.

A `GridPlan` is generated lazily: a million evaluations are never a list in memory. It can be iterated any
number of times (always in the same order), counted without iterating, and described for `--dry-run`.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

from steer_eval.steering.assembly import FIRST_INSTRUCTION, uses_mode
from steer_eval.scoring.behaviors import Behavior, compatible_combinations, resolve
from steer_eval.errors import UserError
from steer_eval.scoring.prompts import Prompt
from steer_eval.runs.records import Request


def combinations_for(k: int, max_combinations: int | None = None, seed: int = 0,
                     only: Sequence[Sequence[str]] | None = None) -> list[tuple[Behavior, ...]]:
    """Compatible k-combinations, or a seeded subsample of them (the same for every setting of a grid)."""
    if only:
        combos = [tuple(resolve(c)) for c in only if len(c) == k]
    else:
        combos = list(compatible_combinations(k))
    if max_combinations is not None and len(combos) > max_combinations:
        combos = sorted(random.Random(f"{seed}:{k}").sample(combos, max_combinations), key=lambda c: [b.id for b in c])
    return combos


@dataclass(frozen=True)
class Setting:
    """One ordered list of behaviours with one way of conveying it; run on every prompt of the plan."""
    behaviors: tuple[str, ...]
    control_method: str
    mode: str


@dataclass(frozen=True)
class GridPlan:
    """Requests = settings x prompts. All orders of a combination are adjacent, so a partial run still compares
    complete order sets. `seed` picks the combination subsample and the instruction paraphrases."""
    prompts: tuple[Prompt, ...]
    ks: tuple[int, ...]
    control_methods: tuple[str, ...]
    modes: tuple[str, ...]
    max_combinations: int | None = None
    seed: int = 0
    only: tuple[tuple[str, ...], ...] | None = None
    first_instruction: bool = False  # text/hybrid: each behaviour's first instruction, not a seeded paraphrase

    def __post_init__(self):
        ids = Counter(p.id for p in self.prompts)
        repeated = sorted(i for i, n in ids.items() if n > 1)
        if repeated:
            raise UserError(f"prompt ids must be unique, but {', '.join(repeated[:5])} appear more than once; "
                            "give every prompt its own id")

    def settings(self) -> Iterator[Setting]:
        for k in self.ks:
            for combo in combinations_for(k, self.max_combinations, self.seed, self.only):
                for order in itertools.permutations(b.id for b in combo):
                    for control_method in self.control_methods:
                        # One behaviour has nothing to join; instructions and activation vectors join one way each.
                        for mode in (self.modes if k > 1 and uses_mode(control_method) else self.modes[:1]):
                            yield Setting(order, control_method, mode)

    def __iter__(self) -> Iterator[Request]:
        for setting in self.settings():
            for p in self.prompts:
                yield Request(p.id, p.prompt, setting.behaviors, setting.control_method, setting.mode,
                              paraphrase_seed=FIRST_INSTRUCTION if self.first_instruction else self.seed)

    def __len__(self) -> int:
        return sum(1 for _ in self.settings()) * len(self.prompts)

    def describe(self) -> list[dict]:
        """One row per (k, control method, mode): combinations, orders and evaluations, for --dry-run."""
        rows: dict[tuple, dict] = {}
        for setting in self.settings():
            k = len(setting.behaviors)
            row = rows.setdefault((k, setting.control_method, setting.mode),
                                  {"k": k, "control_method": setting.control_method, "mode": setting.mode,
                                   "combinations": 0, "orders": 0, "evaluations": 0})
            row["orders"] += 1
            row["combinations"] = row["orders"] // math.factorial(k)
            row["evaluations"] += len(self.prompts)
        return list(rows.values())


def build_grid(prompts: Sequence[Prompt], ks: Sequence[int], control_methods: Sequence[str], modes: Sequence[str],
               max_combinations: int | None = None, seed: int = 0,
               only: Sequence[Sequence[str]] | None = None, first_instruction: bool = False) -> GridPlan:
    return GridPlan(tuple(prompts), tuple(ks), tuple(control_methods), tuple(modes), max_combinations, seed,
                    tuple(tuple(c) for c in only) if only else None, first_instruction)
