"""Aggregation over orders and combinations (DESIGN.md §3): accuracy, best order, order variance Δmax.

A record is any mapping with `behaviors` (the ordered list used), `followed` (bool) and, optionally,
`per_behavior` ({id: bool}). Accuracy is averaged over the orders of a combination first, then over
combinations, so a combination with many orders weighs as much as one with few.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from statistics import mean
from typing import Iterable, Mapping, Sequence

from steer_eval.behaviors import get_behavior, is_seen_combination


def combination_key(behaviors: Sequence[str]) -> str:
    """Order-free name of a combination: its ids sorted and joined with '+'."""
    return "+".join(sorted(behaviors))


@dataclass(frozen=True)
class CombinationResult:
    combination: str
    seen: bool
    order_accuracy: dict[str, float]  # 'german>words_10_50' -> share of generations that followed every behaviour

    @property
    def accuracy(self) -> float:
        return mean(self.order_accuracy.values())

    @property
    def best_order_accuracy(self) -> float:
        return max(self.order_accuracy.values())

    @property
    def order_delta_max(self) -> float:
        """max over pairs of orders |a_i - a_j|; 0 for a single order."""
        return max(self.order_accuracy.values()) - min(self.order_accuracy.values())


def by_combination(records: Iterable[Mapping]) -> list[CombinationResult]:
    outcomes: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        order = tuple(record["behaviors"])
        outcomes[combination_key(order)][">".join(order)].append(bool(record["followed"]))
    results = []
    for combination, orders in sorted(outcomes.items()):
        ids = combination.split("+")
        results.append(CombinationResult(
            combination, is_seen_combination(get_behavior(b) for b in ids),
            {order: sum(hits) / len(hits) for order, hits in sorted(orders.items())}))
    return results


def _aggregate(results: Sequence[CombinationResult]) -> dict:
    if not results:
        return {"combinations": 0}
    multi_order = [r for r in results if len(r.order_accuracy) > 1]
    return {
        "combinations": len(results),
        "accuracy": mean(r.accuracy for r in results),
        "best_order_accuracy": mean(r.best_order_accuracy for r in results),
        # Order variance is only defined where a combination was run in more than one order.
        "order_variance": mean(r.order_delta_max for r in multi_order) if multi_order else None,
        "order_variance_max": max(r.order_delta_max for r in multi_order) if multi_order else None,
    }


def per_behavior_accuracy(records: Iterable[Mapping]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        for behavior, followed in record.get("per_behavior", {}).items():
            hits[behavior].append(bool(followed))
    return {b: sum(v) / len(v) for b, v in sorted(hits.items())}


def summarize(records: Sequence[Mapping]) -> dict:
    """Everything split by seen/unseen combinations: accuracy, best order, order variance (mean, max)."""
    results = by_combination(records)
    return {
        "all": _aggregate(results),
        "seen": _aggregate([r for r in results if r.seen]),
        "unseen": _aggregate([r for r in results if not r.seen]),
        "per_behavior": per_behavior_accuracy(records),
        "generations": len(records),
    }
