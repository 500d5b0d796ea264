"""Tables and plots of grid results, grouped by setting (control method, mode) and number of behaviours."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple

from steer_eval.analysis import summarize
from steer_eval.errors import UserError
from steer_eval.records import Record


class _Outcome(NamedTuple):
    """What a summary needs of a record: no response, no prompt text (memory stays small at a million records)."""
    behaviors: tuple[str, ...]
    prompt_id: str
    followed: bool
    per_behavior: dict[str, bool]


def group_summaries(records: Iterable[Record]) -> dict[tuple[str, str, int], dict]:
    """Summaries per (control method, mode, k), in one pass over the records (a stream is fine); a record is
    counted once even if a file holds it twice; records of two runs in one setting are refused."""
    groups: dict[tuple[str, str, int], dict[int, _Outcome]] = defaultdict(dict)
    runs: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    shared: dict = {}  # one object per distinct order, prompt id and verdict set, however many records share it
    for record in records:
        # Text instructions are joined the same way whatever the mode, so text runs form one setting.
        mode = "-" if record.control_method == "text" else record.mode
        key = (record.control_method, mode, len(record.behaviors))
        verdicts = tuple(record.per_behavior.items())
        groups[key].setdefault(hash(record.key), _Outcome(
            shared.setdefault(record.behaviors, record.behaviors), shared.setdefault(record.prompt_id, record.prompt_id),
            record.followed, shared.setdefault(verdicts, dict(verdicts))))
        runs[key].add(record.run)
    for key, run_ids in runs.items():
        if len(run_ids) > 1:
            raise UserError(f"records of different runs ({', '.join(sorted(r or '?' for r in run_ids))}) share the "
                            f"setting {'/'.join(map(str, key))}; analyze each run's records separately")
    return {key: summarize(list(group.values())) for key, group in sorted(groups.items())}


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(summaries: dict[tuple[str, str, int], dict]) -> str:
    """One row per setting; best order and Δmax come from complete order sets only (`incomplete` = records left out)."""
    lines = ["| control | mode | k | n | combos | acc seen | acc unseen | acc all | best order | Δmax mean | Δmax max "
             "| incomplete |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (control, mode, k), s in summaries.items():
        a = s["all"]
        lines.append(f"| {control} | {mode} | {k} | {s['generations']} | {a['combinations']} | "
                     f"{_percent(s['seen'].get('accuracy'))} | {_percent(s['unseen'].get('accuracy'))} | "
                     f"{_percent(a.get('accuracy'))} | {_percent(a.get('best_order_accuracy'))} | "
                     f"{_percent(a.get('order_variance'))} | {_percent(a.get('order_variance_max'))} | "
                     f"{a.get('incomplete_records', 0)} |")
    return "\n".join(lines)


def plot(summaries: dict[tuple[str, str, int], dict], path: str | Path) -> Path:
    """Accuracy (seen/unseen) and mean order variance against k, one line per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(c, m) for c, m, _ in summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("seen", "accuracy", "accuracy, seen combinations"),
              ("unseen", "accuracy", "accuracy, unseen combinations"),
              ("all", "order_variance", "order variance Δmax (mean)")]
    for axis, (split, metric, title) in zip(axes, panels):
        for control, mode in settings:
            points = [(k, s[split].get(metric)) for (c, m, k), s in summaries.items() if (c, m) == (control, mode)]
            points = [(k, 100 * v) for k, v in points if v is not None]
            if points:
                axis.plot(*zip(*points), marker="o", color=colors[(control, mode)], label=f"{control}/{mode}")
        axis.set_title(title)
        axis.set_xlabel("behaviours composed (k)")
        axis.set_xticks(sorted({k for _, _, k in summaries}))
        axis.set_ylabel("%")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
