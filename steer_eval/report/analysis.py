"""Aggregation over orders and combinations: accuracy, best order, order variance Δmax, and a pandas view.

The rules, used by `steer-eval analyze`, the notebook, the token evaluation and the lm-eval metrics alike:
- accuracy = share of generations in which every behaviour holds, averaged over the orders of a combination
  first, then over combinations, so a combination with many orders weighs as much as one with few;
- best-order accuracy and order variance (Δmax = max over pairs of orders |a_i - a_j|) are computed on
  *complete order sets* only: a combination counts when all k! orders were run, and then only on the prompts
  present in every order. Records outside complete sets are counted in `incomplete_records`, never compared.

A record here is a `records.Record` or any mapping with `behaviors` (ordered), `followed`, a prompt id
(`prompt_id`, or `id` in older files) and optionally `per_behavior`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import mean
from typing import Iterable, Mapping, Sequence

from steer_eval.scoring.behaviors import get_behavior, is_seen_combination


def combination_key(behaviors: Sequence[str]) -> str:
    """Order-free name of a combination: its ids sorted and joined with '+'."""
    return "+".join(sorted(behaviors))


def _fields(record) -> tuple[tuple[str, ...], str, bool, Mapping[str, bool]]:
    if isinstance(record, Mapping):
        prompt_id = record.get("prompt_id", record.get("id"))
        return tuple(record["behaviors"]), str(prompt_id), bool(record["followed"]), record.get("per_behavior") or {}
    return tuple(record.behaviors), str(record.prompt_id), bool(record.followed), record.per_behavior


@dataclass(frozen=True)
class CombinationResult:
    combination: str
    seen: bool
    order_accuracy: dict[str, float]  # 'german>words_10_50' -> accuracy over all of that order's records
    complete_order_accuracy: dict[str, float] | None  # over prompts run in all k! orders; None if an order is missing
    incomplete_records: int  # records left out of complete_order_accuracy

    @property
    def accuracy(self) -> float:
        return mean(self.order_accuracy.values())

    @property
    def best_order_accuracy(self) -> float | None:
        return max(self.complete_order_accuracy.values()) if self.complete_order_accuracy else None

    @property
    def order_delta_max(self) -> float | None:
        """max over pairs of orders |a_i - a_j| on the complete order set; None with fewer than two orders."""
        orders = self.complete_order_accuracy
        if not orders or len(orders) < 2:
            return None
        return max(orders.values()) - min(orders.values())


def by_combination(records: Iterable) -> list[CombinationResult]:
    outcomes: dict[str, dict[str, dict[str, list[bool]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in records:
        order, prompt_id, followed, _ = _fields(record)
        outcomes[combination_key(order)][">".join(order)][prompt_id].append(followed)
    results = []
    for combination, orders in sorted(outcomes.items()):
        ids = combination.split("+")
        total = sum(len(hits) for by_prompt in orders.values() for hits in by_prompt.values())
        complete = None
        kept = 0
        if len(orders) == math.factorial(len(ids)):
            common = set.intersection(*(set(by_prompt) for by_prompt in orders.values()))
            if common:
                complete = {}
                for order, by_prompt in sorted(orders.items()):
                    hits = [h for p in common for h in by_prompt[p]]
                    complete[order] = sum(hits) / len(hits)
                    kept += len(hits)
        order_accuracy = {}
        for order, by_prompt in sorted(orders.items()):
            hits = [h for prompt_hits in by_prompt.values() for h in prompt_hits]
            order_accuracy[order] = sum(hits) / len(hits)
        results.append(CombinationResult(combination, is_seen_combination(get_behavior(b) for b in ids),
                                         order_accuracy, complete, total - kept))
    return results


def _aggregate(results: Sequence[CombinationResult]) -> dict:
    if not results:
        return {"combinations": 0}
    best = [r.best_order_accuracy for r in results if r.best_order_accuracy is not None]
    deltas = [r.order_delta_max for r in results if r.order_delta_max is not None]
    return {
        "combinations": len(results),
        "accuracy": mean(r.accuracy for r in results),
        "best_order_accuracy": mean(best) if best else None,
        # Only defined where a combination was run in all its orders (and in more than one).
        "order_variance": mean(deltas) if deltas else None,
        "order_variance_max": max(deltas) if deltas else None,
        "complete_combinations": sum(r.complete_order_accuracy is not None for r in results),
        "incomplete_records": sum(r.incomplete_records for r in results),
    }


def per_behavior_accuracy(records: Iterable) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        for behavior, followed in _fields(record)[3].items():
            hits[behavior].append(bool(followed))
    return {b: sum(v) / len(v) for b, v in sorted(hits.items())}


def behavior_accuracy(records: Sequence) -> dict:
    """Plain shares over the records: every behaviour held, and each behaviour on its own."""
    if not records:
        return {"accuracy": None, "per_behavior": {}}
    return {"accuracy": sum(_fields(r)[2] for r in records) / len(records),
            "per_behavior": per_behavior_accuracy(records)}


def summary_of(results: Sequence[CombinationResult], per_behavior: dict[str, float], generations: int) -> dict:
    """The summary of `summarize`, from combination results however they were counted."""
    return {
        "all": _aggregate(results),
        "seen": _aggregate([r for r in results if r.seen]),
        "unseen": _aggregate([r for r in results if not r.seen]),
        "per_behavior": per_behavior,
        "generations": generations,
    }


def summarize(records: Sequence) -> dict:
    """Everything split by seen/unseen combinations: accuracy, best order, order variance (mean, max)."""
    return summary_of(by_combination(records), per_behavior_accuracy(records), len(records))


def to_frame(records: Iterable):
    """A pandas DataFrame: one row per record, one boolean column per behaviour's verdict (NaN where absent)."""
    import pandas as pd

    rows = []
    for record in records:
        order, prompt_id, followed, per_behavior = _fields(record)
        get = record.get if isinstance(record, Mapping) else lambda name, default=None: getattr(record, name, default)
        rows.append({"prompt_id": prompt_id, "behaviors": ">".join(order), "combination": combination_key(order),
                     "k": len(order), "seen": is_seen_combination(get_behavior(b) for b in order),
                     "control_method": get("control_method"), "mode": get("mode"), "run": get("run", ""),
                     "response": get("response"), "followed": followed,
                     **{f"verdict_{b}": bool(v) for b, v in per_behavior.items()}})
    frame = pd.DataFrame(rows)
    verdicts = sorted(c for c in frame.columns if c.startswith("verdict_"))
    return frame[[c for c in frame.columns if not c.startswith("verdict_")] + verdicts]
