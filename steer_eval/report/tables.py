"""The markdown of results: one accuracy table per setting (and run), used by `analyze`, `grid` and `compare`,
and the comparison document around it."""
from __future__ import annotations

from typing import Sequence

from steer_eval.report.outcomes import Run, Setting, SettingSummary, behaviors_in, run_label, settings_by_k


def percent(value) -> str:
    """A share as a percentage with one decimal; "—" where there is none (None or NaN)."""
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def fraction(value) -> str:
    return "—" if value is None or value != value else f"{value:.2f}"


# Quality means the summaries carry when records do: key, header, formatter.
QUALITY_COLUMNS = (("repetition", "repetition", fraction), ("distinct_2", "distinct-2", fraction),
                   ("hit_limit", "at limit %", percent), ("fluency", "fluency", fraction))


def accuracy_table(runs: Sequence[Run]) -> str:
    """One row per setting and run (a run column when there are several); best order and Δmax come from complete
    order sets only (`incomplete` = records left out). Quality columns when records carry them: mean repetition,
    distinct-2, % stopped by the token limit, and fluency (mean log-probability per token under the unsteered
    model, from `steer-eval score`)."""
    several = len(runs) > 1
    quality = [column for column in QUALITY_COLUMNS
               if any(column[0] in (s.get("quality") or {}) for run in runs for s in run.summaries.values())]
    headers = ["control", "mode", "k", *(["run"] if several else []), "n", "combos", "acc seen", "acc unseen",
               "acc all", "best order", "Δmax mean", "Δmax max", "incomplete", *(header for _, header, _ in quality)]
    lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    for setting in sorted({key for run in runs for key in run.summaries}):
        for run in runs:
            s = run.summaries.get(setting)
            if s is None:
                continue
            a, q = s["all"], s.get("quality") or {}
            cells = [*map(str, setting), *([run.name] if several else []), s["generations"], a["combinations"],
                     percent(s["seen"].get("accuracy")), percent(s["unseen"].get("accuracy")),
                     percent(a.get("accuracy")), percent(a.get("best_order_accuracy")),
                     percent(a.get("order_variance")), percent(a.get("order_variance_max")),
                     a.get("incomplete_records", 0), *(show(q.get(key)) for key, _, show in quality)]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def markdown_table(summaries: dict[Setting, dict]) -> str:
    """The accuracy table of one run's summaries (`report.outcomes.group_summaries`)."""
    return accuracy_table([Run("", None, {key: SettingSummary(summary, []) for key, summary in summaries.items()})])


def comparison_markdown(runs: Sequence[Run]) -> str:
    """The runs, the accuracy table, and per k: each behaviour's accuracy and each combination's (k > 1)."""
    lines = ["# Runs compared", ""]
    lines += [f"- **{run.name}**: `{run.source}` ({run.generations:,} generations)" for run in runs]
    return "\n".join(lines) + "\n\n" + results_markdown(runs)


def results_markdown(runs: Sequence[Run]) -> str:
    """The accuracy table, and per k: each behaviour's accuracy and each combination's (k > 1)."""
    lines = ["## Accuracy per setting", "",
              "Accuracy = every behaviour holds; best order and Δmax (order variance) from complete order sets only.",
              "", accuracy_table(runs)]
    for k in sorted({key[2] for run in runs for key in run.summaries}):
        columns = settings_by_k(runs, k)
        header = ["| " + " | ".join(run_label(run, *key[:2]) for run, key in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        lines += ["", f"## Per-behaviour accuracy, k = {k}" + (" (within compositions)" if k > 1 else ""), "",
                  "| behaviour " + header[0], header[1]]
        for behavior in behaviors_in(runs, k):
            lines.append(f"| {behavior} | " + " | ".join(
                percent(run.summaries[key]["per_behavior"].get(behavior)) for run, key in columns) + " |")
        if k > 1:
            lines += ["", f"## Combinations, k = {k}: accuracy averaged over orders (Δ = best − worst order on the "
                      "prompts run in every order; — where an order is missing)", "",
                      "| combination " + header[0], header[1]]
            found = {(run.name, key): {r.combination: r for r in run.settings[key].combinations}
                     for run, key in columns}
            for combination in sorted({c for results in found.values() for c in results}):
                cells = []
                for run, key in columns:
                    result = found[(run.name, key)].get(combination)
                    cells.append("—" if result is None else
                                 f"{percent(result.accuracy)} (Δ {percent(result.order_delta_max)})")
                lines.append(f"| {combination} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
