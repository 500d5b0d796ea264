"""The evaluation grid as data: every order of every compatible combination, for each prompt and setting."""
from __future__ import annotations

import itertools
import random
from typing import Sequence

from steer_eval.behaviors import Behavior, compatible_combinations, resolve
from steer_eval.prompts import Prompt
from steer_eval.records import Request


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


def build_grid(prompts: Sequence[Prompt], ks: Sequence[int], control_methods: Sequence[str], modes: Sequence[str],
               max_combinations: int | None = None, seed: int = 0,
               only: Sequence[Sequence[str]] | None = None) -> list[Request]:
    """All orders of each combination are adjacent, so a partial run still compares complete order sets.

    `seed` picks the combination subsample and the instruction paraphrases (text and hybrid control).
    """
    items = []
    for k in ks:
        for combo in combinations_for(k, max_combinations, seed, only):
            for order in itertools.permutations(b.id for b in combo):
                for control_method in control_methods:
                    # One behaviour has nothing to join, and text instructions are joined the same way in every mode.
                    for mode in (modes if k > 1 and control_method != "text" else modes[:1]):
                        items.extend(Request(p.id, p.prompt, order, control_method, mode, paraphrase_seed=seed) for p in prompts)
    return items
