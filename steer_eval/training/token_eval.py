"""Held-out evaluation of steering tokens: text vs steering vs hybrid (and the CAA/PrOSV baselines) per behaviour,
and for 2-behaviour compositions composition vs concatenation vs native_and vs text vs the baselines in both
orders (trainers/evaluate_tokens.py).

`plan()` lists the requests (they run through the one runner); `summarize()` re-judges the records with this
checkout's verifiers and writes the tables (accuracy over orders then combinations, order variance on complete
order sets, seen/unseen split, as in steer_eval.report.analysis).
"""
from __future__ import annotations

import json
import sys
from itertools import permutations
from pathlib import Path
from typing import Sequence

from steer_eval.report.analysis import by_combination
from steer_eval.report.analysis import summarize as aggregate
from steer_eval.report.tables import percent as _pct
from steer_eval.steering.assembly import uses_mode
from steer_eval.scoring.behaviors import BEHAVIORS, get_behavior, is_seen_combination, resolve
from steer_eval.scoring.prompts import Prompt
from steer_eval.runs.records import Record, Request, iter_records, rejudge
from steer_eval.scoring.verdict import scorer_spec

SINGLE_METHODS = ("text", "steering", "hybrid", "caa", "prosv")
PAIR_CONDITIONS = (("text", "concatenation"), ("steering", "composition"), ("steering", "concatenation"),
                   ("steering", "native_and"), ("hybrid", "composition"), ("caa", "composition"),
                   ("prosv", "composition"))


def plan(prompts: Sequence[Prompt], singles: Sequence[str], pairs: Sequence[Sequence[str]],
         single_methods: Sequence[str], pair_conditions: Sequence[tuple[str, str]], n_single: int | None,
         n_pair: int | None) -> list[Request]:
    """Singles under each method on the first n_single prompts; each pair in both orders under each condition."""
    items = []
    for b in singles:
        resolve([b])
        for method in single_methods:
            items += [Request(p.id, p.prompt, (b,), method, "composition") for p in prompts[:n_single]]
    for pair in pairs:
        resolve(pair)
        for order in permutations(pair):
            for method, mode in pair_conditions:
                items += [Request(p.id, p.prompt, order, method, mode) for p in prompts[:n_pair]]
    return items


def accuracy(records: Sequence[Record]) -> float:
    return sum(r.followed for r in records) / len(records) if records else float("nan")


def quality(records: Sequence[Record]) -> dict:
    """Mean repetition and distinct-2 of the responses (measured now for records written without them)."""
    from steer_eval.scoring.quality import measure

    measured = [r.quality or measure(r.response) for r in records]
    distinct = [q["distinct_2"] for q in measured if q.get("distinct_2") is not None]
    return {"repetition": sum(q["repetition"] for q in measured) / len(measured) if measured else float("nan"),
            "distinct_2": sum(distinct) / len(distinct) if distinct else float("nan")}


def summarize(folders: Sequence[str | Path], out: str | Path, split: str = "test") -> dict:
    """Judge every record again with this checkout's verifiers, tabulate, write table.json and table.md."""
    by_condition: dict[tuple, list[Record]] = {}
    for folder in folders:
        for r in iter_records(folder):
            r = rejudge(r)
            pair = len(r.behaviors) > 1
            condition = (f"{r.control_method}/{r.mode}" if uses_mode(r.control_method) else r.control_method) \
                if pair else r.control_method
            by_condition.setdefault((pair, condition), []).append(r)

    singles: dict[str, dict] = {}
    for (pair, method), records in sorted(by_condition.items()):
        if not pair:
            for behavior in sorted({r.behaviors[0] for r in records}, key=list(BEHAVIORS).index):
                subset = [r for r in records if r.behaviors[0] == behavior]
                singles.setdefault(behavior, {})[method] = {"accuracy": accuracy(subset), "n": len(subset),
                                                            **quality(subset)}
    for row in singles.values():
        if "text" in row and "steering" in row and row["text"]["accuracy"]:
            row["steering_over_text"] = row["steering"]["accuracy"] / row["text"]["accuracy"]

    pairs: dict[str, dict] = {}
    pairs_aggregate = {}
    for (pair, condition), records in sorted(by_condition.items()):
        if not pair:
            continue
        summary = aggregate(records)
        for group in ("seen", "unseen"):
            if summary[group]["combinations"]:
                in_group = [r for r in records
                            if is_seen_combination(get_behavior(b) for b in r.behaviors) == (group == "seen")]
                pairs_aggregate[f"{group}|{condition}"] = {**summary[group], **quality(in_group)}
        for result in by_combination(records):
            entry = pairs.setdefault(result.combination, {"seen": result.seen, "conditions": {}})
            entry["conditions"][condition] = {"orders": result.order_accuracy, "mean": result.accuracy,
                                              "best": result.best_order_accuracy, "order_delta": result.order_delta_max}
    behaviors_used = sorted({b for records in by_condition.values() for r in records for b in r.behaviors})
    result = {"split": split, "singles": singles, "pairs": pairs,
              "pairs_aggregate": dict(sorted(pairs_aggregate.items())),
              "scorer": scorer_spec([]) | {"verifiers": [get_behavior(b).spec() for b in behaviors_used]},
              "records": [str(f) for f in folders], "command": " ".join(sys.argv)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(markdown(result))
    return result


# The paper's Table 1 rows: a method's single-behaviour column and its 2-behaviour condition.
METHOD_ROWS = (("text instruction", "text", "text"), ("steering tokens, <and>", "steering", "steering/composition"),
               ("steering tokens, concatenation", None, "steering/concatenation"),
               ("steering tokens, native and", None, "steering/native_and"),
               ("hybrid (tokens + instruction)", "hybrid", "hybrid/composition"), ("CAA", "caa", "caa"),
               ("PrOSV", "prosv", "prosv"))


def condition_name(method: str, mode: str) -> str:
    return f"{method}/{mode}" if uses_mode(method) else method


def _side_by_side(result: dict) -> list[str]:
    """One row per method: mean single-behaviour accuracy and quality, seen/unseen pair accuracy, order Δ."""
    present = {m for row in result["singles"].values() for m in row if m in SINGLE_METHODS}
    # Only behaviours every method was run on, so each column averages the same behaviours and prompts.
    singles = {b: row for b, row in result["singles"].items() if present <= row.keys()}
    lines = [f"## Methods side by side (accuracy %; repetition 0–1, lower is better; singles: the {len(singles)} "
             "behaviours every method was run on)", "",
             "| method | singles | repetition | seen pairs | unseen pairs | mean Δ order (seen) | pair repetition |",
             "|---|---|---|---|---|---|---|"]
    for label, single, pair in METHOD_ROWS:
        rows = [row[single] for row in singles.values() if single in row] if single else []
        seen = result["pairs_aggregate"].get(f"seen|{pair}")
        unseen = result["pairs_aggregate"].get(f"unseen|{pair}")
        if not rows and not seen and not unseen:
            continue
        mean = (lambda key: sum(r[key] for r in rows) / len(rows)) if rows else (lambda key: None)
        lines.append(f"| {label} | {_pct(mean('accuracy'))} | {_num(mean('repetition'))} | "
                     f"{_pct(seen and seen['accuracy'])} | {_pct(unseen and unseen['accuracy'])} | "
                     f"{_pct(seen and seen['order_variance'])} | {_num(seen and seen.get('repetition'))} |")
    return lines + [""]


def _num(value) -> str:
    return "–" if value is None or value != value else f"{value:.2f}"


def markdown(result: dict) -> str:
    methods = [m for m in SINGLE_METHODS if any(m in row for row in result["singles"].values())]
    lines = _side_by_side(result) + [
        f"## Single behaviours (accuracy %, {result['split']} prompts; repetition in brackets)", "",
        f"| behaviour | n | {' | '.join(methods)} | steering / text |", "|---|---|" + "---|" * (len(methods) + 1)]
    for b, row in result["singles"].items():
        n = next(iter(row.values()))["n"] if row else 0
        cells = [f"{_pct(row[m]['accuracy'])} ({_num(row[m].get('repetition'))})" if m in row else "–"
                 for m in methods]
        lines.append(f"| {b} | {n} | {' | '.join(cells)} | {_pct(row.get('steering_over_text'))} |")
    if result["pairs"]:
        present = {name for combo in result["pairs"].values() for name in combo["conditions"]}
        names = [n for n in (condition_name(m, mode) for m, mode in PAIR_CONDITIONS) if n in present]
        lines += ["", "## Two-behaviour compositions (accuracy % averaged over both orders; Δ = order difference)", "",
                  "| group | condition | combinations | accuracy | mean Δ | max Δ | repetition |",
                  "|---|---|---|---|---|---|---|"]
        for key, row in result["pairs_aggregate"].items():
            seen, condition = key.split("|")
            lines.append(f"| {seen} | {condition} | {row['combinations']} | {_pct(row['accuracy'])} | "
                         f"{_pct(row['order_variance'])} | {_pct(row['order_variance_max'])} | "
                         f"{_num(row.get('repetition'))} |")
        lines += ["", "| combination | seen | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for key, combo in result["pairs"].items():
            cells = []
            for name in names:
                c = combo["conditions"].get(name)
                cells.append("–" if c is None else f"{_pct(c['mean'])} (Δ {_pct(c['order_delta'])})")
            lines.append(f"| {key} | {'seen' if combo['seen'] else 'unseen'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
