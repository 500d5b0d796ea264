"""Per-setting summaries of a record stream in flat memory (a million records and more).

Each record becomes one row of compact columns instead of a Python object: the hash of its key (8 bytes), an id of
its order and verdict layout, its prompt's index and its verdict bits (4 bytes each), 20 bytes in all. A key seen
twice counts once, the first time, as `analysis` expects of records; those duplicates are found when the stream
ends, by sorting the hashes. The numbers are exactly those of `analysis.summarize` on the deduplicated records.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from steer_eval.errors import UserError
from steer_eval.report.analysis import CombinationResult, combination_key, summary_of
from steer_eval.runs.records import Record, judged_by_verifiers
from steer_eval.scoring.behaviors import BEHAVIORS, get_behavior, is_seen_combination
from steer_eval.scoring.quality import measure

Setting = tuple[str, str, int]  # control method, mode ("-" for text: its instructions join alike in every mode), k
FOLLOWED = 1 << 31  # the verdict word's top bit; bit i holds the verdict of the record's i-th per_behavior entry


class SettingSummary(NamedTuple):
    summary: dict  # analysis.summarize's numbers and `quality` means
    combinations: list[CombinationResult]  # per combination: accuracy of each order, Δmax on the complete set


@dataclass(frozen=True)
class Run:
    """One records source summarised per setting; `name` labels it in tables and plots ("" for a lone run)."""
    name: str
    source: Path | None
    settings: dict[Setting, SettingSummary] = field(repr=False)

    @property
    def summaries(self) -> dict[Setting, dict]:
        return {key: setting.summary for key, setting in self.settings.items()}

    @property
    def generations(self) -> int:
        return sum(setting.summary["generations"] for setting in self.settings.values())


def setting_label(control: str, mode: str) -> str:
    return control if mode == "-" else f"{control} ({mode})"


def run_label(run: Run, control: str, mode: str) -> str:
    return f"{run.name}: {setting_label(control, mode)}" if run.name else setting_label(control, mode)


def settings_by_k(runs: Sequence[Run], k: int) -> list[tuple[Run, Setting]]:
    """The (run, setting) series of one k, settings in order and the runs side by side within each."""
    keys = sorted({key for run in runs for key in run.summaries if key[2] == k}, key=lambda s: (s[0], s[1]))
    return [(run, key) for key in keys for run in runs if key in run.settings]


def behaviors_in(runs: Sequence[Run], k: int) -> list[str]:
    found = {b for run in runs for (_, _, kk), s in run.summaries.items() if kk == k for b in s["per_behavior"]}
    return sorted(found, key=lambda b: (list(BEHAVIORS).index(b) if b in BEHAVIORS else len(BEHAVIORS), b))


def setting_of(record: Record) -> Setting:
    return record.control_method, "-" if record.control_method == "text" else record.mode, len(record.behaviors)


class _QualitySums:
    """Running sums of the records' quality fields; a field missing from a record (older records, no fluency pass)
    is left out of that field's mean, not counted as 0."""

    FIELDS = ("repetition", "distinct_2", "hit_limit", "fluency")

    def __init__(self):
        self.records = 0
        self.sums = dict.fromkeys(self.FIELDS, 0.0)
        self.counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, quality: dict) -> None:
        self.records += 1
        for name in self.FIELDS:
            if quality.get(name) is not None:
                self.sums[name] += float(quality[name])
                self.counts[name] += 1

    def means(self) -> dict:
        if not self.records:
            return {}
        return {"records": self.records, **{name: self.sums[name] / self.counts[name] if self.counts[name] else None
                                            for name in self.FIELDS}}


def quality_of(record: Record) -> dict:
    """Quality of a record written before records carried it (not of simulated text) is measured from its response;
    tokens and the limit need the model's tokenizer. A fluency score from a sidecar is kept."""
    if "repetition" in record.quality or not judged_by_verifiers(record):
        return record.quality
    return {**measure(record.response), **record.quality}


def _view(column: array, dtype) -> np.ndarray:
    return np.frombuffer(column, dtype) if len(column) else np.empty(0, dtype)


class _SeenFilter:
    """About 32 bits per record set by the key hashes: a clear bit proves a key new, a set one is checked against
    every hash. Quality sums need it: they must skip a duplicate as it streams by, in the records' order."""

    def __init__(self, hashes: array):
        self.rebuild(hashes)

    def rebuild(self, hashes: array) -> None:
        self.bits = bytearray(1 << max(13, (4 * len(hashes)).bit_length()))
        self.mask = 8 * len(self.bits) - 1
        slots = _view(hashes, np.int64) & self.mask
        np.bitwise_or.at(np.frombuffer(self.bits, np.uint8), slots >> 3, (1 << (slots & 7)).astype(np.uint8))

    def seen(self, identity: int, hashes: array) -> bool:
        slot = identity & self.mask
        return bool(self.bits[slot >> 3] >> (slot & 7) & 1) and bool((_view(hashes, np.int64) == identity).any())

    def add(self, identity: int, hashes: array) -> None:
        if 32 * len(hashes) > self.mask:
            self.rebuild(hashes)
        else:
            slot = identity & self.mask
            self.bits[slot >> 3] |= 1 << (slot & 7)


class _SettingColumns:
    """The rows of one setting, appended as records stream by."""

    def __init__(self, prompt_index: dict[str, int]):
        self.hashes, self.shapes, self.prompts, self.verdicts = array("q"), array("I"), array("I"), array("I")
        self.prompt_index = prompt_index  # shared by every setting
        self.shape_ids: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}  # (order, verdict names) -> id
        self.runs: set[str] = set()
        self.quality = _QualitySums()
        self.filter: _SeenFilter | None = None  # built at the first record that carries quality

    def add(self, record: Record) -> None:
        identity = hash(record.key)
        quality = quality_of(record)
        if quality:
            if self.filter is None:
                self.filter = _SeenFilter(self.hashes)
            if not self.filter.seen(identity, self.hashes):
                self.quality.add(quality)
        verdicts = FOLLOWED if record.followed else 0
        for position, held in enumerate(record.per_behavior.values()):
            verdicts |= bool(held) << position
        if len(record.per_behavior) > 31:
            raise UserError(f"record {record.key} has {len(record.per_behavior)} verdicts; at most 31 are counted")
        shape = (record.behaviors, tuple(record.per_behavior))
        self.hashes.append(identity)
        self.shapes.append(self.shape_ids.setdefault(shape, len(self.shape_ids)))
        self.prompts.append(self.prompt_index.setdefault(record.prompt_id, len(self.prompt_index)))
        self.verdicts.append(verdicts)
        self.runs.add(record.run)
        if self.filter is not None:
            self.filter.add(identity, self.hashes)

    def summarize(self) -> SettingSummary:
        """The setting's numbers; the columns are released on the way, so call it once."""
        keep = _first_occurrences(_view(self.hashes, np.int64))
        self.hashes = self.filter = None
        shapes, prompts, verdicts = (_view(c, np.uint32) for c in (self.shapes, self.prompts, self.verdicts))
        if keep is not None:
            shapes, prompts, verdicts = shapes[keep], prompts[keep], verdicts[keep]
        per_behavior = _per_behavior(self.shape_ids, shapes, verdicts)
        results = _combinations(self.shape_ids, shapes, prompts, verdicts, len(self.prompt_index))
        return SettingSummary({**summary_of(results, per_behavior, len(shapes)), "quality": self.quality.means()},
                              results)


def _first_occurrences(hashes: np.ndarray) -> np.ndarray | None:
    """Mask of the rows whose hash no earlier row has; None when every hash is distinct (the common case)."""
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not len(repeated):
        return None
    involved = np.zeros(len(hashes), bool)
    for start in range(0, len(hashes), 1 << 20):  # bounded temporaries, however many rows
        part = hashes[start:start + (1 << 20)]
        found = np.minimum(np.searchsorted(repeated, part), len(repeated) - 1)
        involved[start:start + len(part)] = repeated[found] == part
    rows = np.flatnonzero(involved)
    _, first = np.unique(hashes[rows], return_index=True)
    keep = ~involved
    keep[rows[first]] = True
    return keep


def _per_behavior(shape_ids: dict, shapes: np.ndarray, verdicts: np.ndarray) -> dict[str, float]:
    totals = np.bincount(shapes, minlength=len(shape_ids))
    widest = max((len(names) for _, names in shape_ids), default=0)
    held = [np.bincount(shapes[(verdicts >> position) & 1 == 1], minlength=len(shape_ids))
            for position in range(widest)]
    counts: dict[str, list[int]] = {}
    for (_, names), shape in shape_ids.items():
        for position, behavior in enumerate(names):
            count = counts.setdefault(behavior, [0, 0])
            count[0] += int(held[position][shape])
            count[1] += int(totals[shape])
    return {behavior: hits / total for behavior, (hits, total) in sorted(counts.items()) if total}


def _combinations(shape_ids: dict, shapes: np.ndarray, prompts: np.ndarray, verdicts: np.ndarray,
                  prompt_count: int) -> list[CombinationResult]:
    """analysis.by_combination on the columns: rows sorted by one int64 key (order, prompt, followed), the orders
    of a combination next to each other, so each combination is one slice."""
    orders = sorted({order for order, _ in shape_ids}, key=lambda order: (combination_key(order), ">".join(order)))
    rank = {order: i for i, order in enumerate(orders)}
    rank_of_shape = np.array([rank[order] for order, _ in shape_ids], np.int64)
    key = rank_of_shape[shapes]
    key *= prompt_count
    key += prompts
    key <<= 1
    key |= verdicts >> 31
    key.sort()
    starts = np.searchsorted(key, np.arange(len(orders) + 1, dtype=np.int64) * (2 * prompt_count))
    results, first = [], 0
    while first < len(orders):
        combination = combination_key(orders[first])
        last = first
        while last < len(orders) and combination_key(orders[last]) == combination:
            last += 1
        block = key[starts[first]:starts[last]]
        results.append(_combination(combination, orders[first:last], block, first, prompt_count))
        first = last
    return results


def _combination(combination: str, orders: list[tuple[str, ...]], block: np.ndarray, first: int,
                 prompt_count: int) -> CombinationResult:
    pairs = block >> 1
    order_of_row = pairs // prompt_count - first
    followed = (block & 1).astype(bool)
    totals = np.bincount(order_of_row, minlength=len(orders))
    hits = np.bincount(order_of_row[followed], minlength=len(orders))
    names = [">".join(order) for order in orders]
    order_accuracy = {name: int(h) / int(t) for name, h, t in zip(names, hits, totals)}
    complete, kept = None, 0
    ids = combination.split("+")
    if len(orders) == math.factorial(len(ids)):
        distinct = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # pairs are sorted: one entry per (order, prompt)
        in_every_order = np.bincount(distinct % prompt_count) == len(orders)
        common = in_every_order[pairs % prompt_count]
        if common.any():
            common_totals = np.bincount(order_of_row[common], minlength=len(orders))
            common_hits = np.bincount(order_of_row[common & followed], minlength=len(orders))
            complete = {name: int(h) / int(t) for name, h, t in zip(names, common_hits, common_totals)}
            kept = int(common_totals.sum())
    return CombinationResult(combination, is_seen_combination(get_behavior(b) for b in ids), order_accuracy,
                             complete, len(block) - kept)


def summarize_settings(records: Iterable[Record]) -> dict[Setting, SettingSummary]:
    """One pass over the records (a stream is fine); records of two runs in one setting are refused."""
    prompt_index: dict[str, int] = {}
    columns: dict[Setting, _SettingColumns] = {}
    for record in records:
        setting = setting_of(record)
        if setting not in columns:
            columns[setting] = _SettingColumns(prompt_index)
        columns[setting].add(record)
    for setting, found in columns.items():
        if len(found.runs) > 1:
            raise UserError(f"records of different runs ({', '.join(sorted(r or '?' for r in found.runs))}) share "
                            f"the setting {'/'.join(map(str, setting))}; analyze each run's records separately")
    return {setting: columns.pop(setting).summarize() for setting in sorted(columns)}


def group_summaries(records: Iterable[Record]) -> dict[Setting, dict]:
    """Summaries per setting; each has `quality` (mean repetition, distinct-2, share at the token limit, fluency)
    when the records carry it."""
    return {setting: found.summary for setting, found in summarize_settings(records).items()}
