"""What the results page embeds of runs' records, in two streaming passes (flat memory, any number of records).

Pass 1 feeds every record to the per-setting summaries (`outcomes.summarize_settings`, so the page's numbers are
`analyze`'s) and to an order index: for each run, setting, combination and prompt, which orders held and which
failed, so the prompts whose verdict flips between orders are known. Then `SampleRule` picks what the page shows
one by one, by a seeded hash (blake2b of the seed and the names), so the choice depends on neither the records'
order nor the machine. Pass 2 reads the records again and keeps the ones picked.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from steer_eval.errors import UserError
from steer_eval.judges.llm import SCORES_FILE, judge_dir
from steer_eval.report.analysis import combination_key
from steer_eval.report.compare import Through, check_source, run_records
from steer_eval.report.outcomes import Setting, SettingSummary, quality_of, setting_of, summarize_settings
from steer_eval.runs.records import Record, judged_by_verifiers, read_rows
from steer_eval.scoring.verdict import explain, verify



@dataclass(frozen=True)
class SampleRule:
    """Which responses the page embeds; aggregates always come from every record."""
    seed: int = 0
    cases_per_k: int = 40  # a case: one prompt under one combination, with every response to it
    flip_cases: int = 200  # cases whose verdict flips between orders: at most one per combination, this many in all
    failures_per_setting: int = 50
    flips_listed: int = 20  # flipping prompts named per combination and setting in the order view

    def describe(self) -> str:
        return (f"Seed {self.seed}. A case is one prompt under one combination with every response to it (every "
                f"run, control method, mode and order). Embedded: per k, the {self.cases_per_k} cases with the "
                f"smallest seeded hash; per combination, the flipping case (a prompt that holds in one order and "
                f"fails in another) with the smallest hash, {self.flip_cases} such cases at most; and per run and "
                f"setting, the {self.failures_per_setting} failing records with the smallest hash of their key. "
                "The hash is blake2b of the seed and the names, so the choice does not depend on the records' "
                "order. Every number on the page is computed from all records.")


def seeded_hash(seed: int, *names: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join((str(seed), *names)).encode(), digest_size=8).digest(), "big")


def order_names(combination: str) -> list[str]:
    """The orders of a combination, in the page's column order (permutations of its sorted ids)."""
    return [">".join(order) for order in itertools.permutations(combination.split("+"))]


@dataclass
class RunRecords:
    """One run as the page needs it: its summaries (all records), order index and the records kept."""
    name: str
    source: Path
    settings: dict[Setting, SettingSummary] = field(default_factory=dict)
    # (setting, combination) -> prompt_id -> [orders held, orders failed] as bit masks over order_names()
    orders: dict[tuple[Setting, str], dict[str, list[int]]] = field(default_factory=dict)
    failures: dict[Setting, list[tuple[int, str]]] = field(default_factory=dict)  # max-heaps of (-hash, key)
    samples: list[dict] = field(default_factory=list)
    scorer_versions: dict[str, int] = field(default_factory=dict)  # scorer name/version -> records

    def flips(self, setting: Setting, combination: str) -> list[str]:
        """Prompts that held in one order and failed in another (with several samples: held in all of one order's
        samples and failed in all of another's)."""
        return [prompt for prompt, masks in self.orders.get((setting, combination), {}).items() if flipped(masks)]


def flipped(masks: list[int]) -> bool:
    held, failed = masks
    return bool(held & ~failed and failed & ~held)


def _records(source: Path, through: Through | None, progress: str | None = None) -> Iterator[Record]:
    records = run_records(source, through)
    return tqdm(records, desc=progress, unit=" records", mininterval=1.0) if progress else records


def first_pass(run: RunRecords, rule: SampleRule, through: Through | None, progress: bool = False) -> None:
    positions: dict[tuple[str, ...], int] = {}

    def indexed(records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            setting = setting_of(record)
            combination = combination_key(record.behaviors)
            position = positions.get(record.behaviors)
            if position is None:
                position = positions[record.behaviors] = order_names(combination).index(">".join(record.behaviors))
            by_prompt = run.orders.get((setting, combination))
            if by_prompt is None:
                by_prompt = run.orders[(setting, combination)] = {}
            masks = by_prompt.get(record.prompt_id)
            if masks is None:
                masks = by_prompt[record.prompt_id] = [0, 0]
            masks[0 if record.followed else 1] |= 1 << position
            if not record.followed:
                heap = run.failures.setdefault(setting, [])
                entry = (-seeded_hash(rule.seed, record.key), record.key)
                if len(heap) < rule.failures_per_setting:
                    heapq.heappush(heap, entry)
                elif rule.failures_per_setting and entry > heap[0]:
                    heapq.heapreplace(heap, entry)
            scorer = f"{record.scorer.get('scorer')} v{record.scorer.get('version')}"
            run.scorer_versions[scorer] = run.scorer_versions.get(scorer, 0) + 1
            yield record

    run.settings = summarize_settings(indexed(_records(run.source, through, progress and f"{run.name}: numbers")))
    if not run.settings:
        raise UserError(f"no records in {run.source} (give a JSONL file, a folder of them or a .tar.gz)")


def chosen_cases(runs: Sequence[RunRecords], rule: SampleRule) -> set[tuple[str, str]]:
    """(combination, prompt_id) of every case the rule embeds (see SampleRule.describe)."""
    cases = {(combination, prompt) for run in runs for (_, combination), by_prompt in run.orders.items()
             for prompt in by_prompt}
    by_k: dict[int, list[tuple[str, str]]] = {}
    for case in cases:
        by_k.setdefault(case[0].count("+") + 1, []).append(case)
    rank = {case: seeded_hash(rule.seed, *case) for case in cases}
    chosen = {case for found in by_k.values() for case in heapq.nsmallest(rule.cases_per_k, found, key=rank.get)}
    flipping: dict[str, tuple[str, str]] = {}
    for run in runs:
        for (_, combination), by_prompt in run.orders.items():
            for prompt, masks in by_prompt.items():
                best = flipping.get(combination)
                if flipped(masks) and (best is None or rank[(combination, prompt)] < rank[best]):
                    flipping[combination] = (combination, prompt)
    return chosen | set(heapq.nsmallest(rule.flip_cases, flipping.values(), key=rank.get))


def _judge_scores(source: Path, keys: set[str]) -> dict[str, dict]:
    """LLM-judge scores (`steer-eval judge`) of the kept records, when the run has them."""
    path = judge_dir(source) / SCORES_FILE
    if not path.is_file():
        return {}
    return {row["key"]: {name: row[name] for name in ("relevance", "fluency", "combined") if name in row}
            for row in read_rows(path) if row.get("key") in keys and "error" not in row}


SHOWN_CHARACTERS = 20_000  # of a response or prompt on the page; badges and numbers are of the whole text


def shown(text: str | None) -> str | None:
    if text is None or len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}\n[... {len(text) - SHOWN_CHARACTERS:,} more characters in the record]"


def sample_of(record: Record, kept_as: str) -> dict:
    """One record as the page shows it; `reasons` say what today's verifiers measured, `today` their verdicts
    (the record's own verdicts may come from an older scorer)."""
    real = judged_by_verifiers(record)
    return {"key": record.key, "prompt_id": record.prompt_id, "behaviors": list(record.behaviors),
            "combination": combination_key(record.behaviors), "k": len(record.behaviors),
            "control": record.control_method, "mode": "-" if record.control_method == "text" else record.mode,
            "order": ">".join(record.behaviors), "followed": record.followed, "per_behavior": record.per_behavior,
            "reasons": explain(record.behaviors, record.response) if real else None,
            "today": verify(record.behaviors, record.response).per_behavior if real else None,
            "steering": list(record.steering), "instruction": shown(record.instruction),
            "response": shown(record.response),
            "quality": {name: value for name, value in quality_of(record).items()
                        if name in ("repetition", "distinct_2", "hit_limit", "fluency", "tokens")},
            "kept_as": kept_as}


def second_pass(run: RunRecords, cases: set[tuple[str, str]], through: Through | None,
                prompts_wanted: set[str], progress: bool = False) -> dict[str, str]:
    """Keeps the records of the chosen cases and failures in run.samples; returns prompt texts of prompts_wanted."""
    failure_keys = {key for heap in run.failures.values() for _, key in heap}
    texts, seen = {}, set()
    for record in _records(run.source, None, progress and f"{run.name}: samples"):
        if record.prompt_id in prompts_wanted and record.prompt_id not in texts:
            texts[record.prompt_id] = shown(record.request.prompt)
        case = (combination_key(record.behaviors), record.prompt_id) in cases
        if (case or record.key in failure_keys) and record.key not in seen:
            seen.add(record.key)
            fresh = next(iter(through([record]))) if through else record
            run.samples.append(sample_of(fresh, "case" if case else "failure"))
            texts[record.prompt_id] = shown(record.request.prompt)
    scores = _judge_scores(run.source, seen)
    for sample in run.samples:
        if sample["key"] in scores:
            sample["judge"] = scores[sample["key"]]
    return texts


def collect(sources: Sequence[str | Path], names: Sequence[str], rule: SampleRule,
            through: Through | None = None, progress: bool = False
            ) -> tuple[list[RunRecords], set[tuple[str, str]], dict[str, str]]:
    """Both passes over every run: (runs, the cases embedded, prompt id -> text of every prompt shown)."""
    runs = [RunRecords(name, Path(source)) for source, name in zip(sources, names)]
    for run in runs:  # before any progress bar: a wrong path is one line
        check_source(run.source)
    for run in runs:
        first_pass(run, rule, through, progress)
    cases = chosen_cases(runs, rule)
    wanted = {prompt for run in runs for setting in run.settings for result in run.settings[setting].combinations
              for prompt in listed_flips(run.flips(setting, result.combination), result.combination, rule)}
    prompts: dict[str, str] = {}
    for run in runs:
        prompts.update(second_pass(run, cases, through, wanted - set(prompts), progress))
    return runs, cases, prompts


def listed_flips(flips: Sequence[str], combination: str, rule: SampleRule) -> list[str]:
    """Of a combination's flipping prompts (`RunRecords.flips`), those the order view names: the `flips_listed`
    smallest by hash."""
    return heapq.nsmallest(rule.flips_listed, flips, key=lambda prompt: seeded_hash(rule.seed, combination, prompt))
