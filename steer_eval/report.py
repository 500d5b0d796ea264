"""Tables and plots of grid results, grouped by setting (control method, mode) and number of behaviours."""
from __future__ import annotations

import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from steer_eval.analysis import summarize
from steer_eval.inference import parse_jsonl, read_records
from steer_eval.scoring import verify


def load_records(path: str | Path) -> list[dict]:
    """Records from a JSONL file, a folder of them (a grid's output), or a .tar.gz of JSONL files.

    Records stored without verdicts (responses only) are judged here with the current verifiers.
    """
    path = Path(path)
    if path.is_dir():
        records = [r for file in sorted(path.glob("*.jsonl")) for r in read_records(file)]
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as archive:
            records = [r for member in sorted(archive.getmembers(), key=lambda m: m.name)
                       if member.isfile() and member.name.endswith(".jsonl")
                       for r in parse_jsonl(archive.extractfile(member).read().decode("utf-8"))]
    else:
        records = read_records(path)
    return [r if "followed" in r else {**r, **verify(r["behaviors"], r["response"]).as_dict()} for r in records]


def group_summaries(records: Sequence[dict]) -> dict[tuple[str, str, int], dict]:
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for record in records:
        # Text instructions are joined the same way whatever the mode, so text runs form one setting.
        mode = "-" if record["control_method"] == "text" else record["mode"]
        groups[(record["control_method"], mode, len(record["behaviors"]))].append(record)
    return {key: summarize(group) for key, group in sorted(groups.items())}


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(summaries: dict[tuple[str, str, int], dict]) -> str:
    lines = ["| control | mode | k | n | combos | acc seen | acc unseen | acc all | best order | Δmax mean | Δmax max |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (control, mode, k), s in summaries.items():
        a = s["all"]
        lines.append(f"| {control} | {mode} | {k} | {s['generations']} | {a['combinations']} | "
                     f"{_percent(s['seen'].get('accuracy'))} | {_percent(s['unseen'].get('accuracy'))} | "
                     f"{_percent(a.get('accuracy'))} | {_percent(a.get('best_order_accuracy'))} | "
                     f"{_percent(a.get('order_variance'))} | {_percent(a.get('order_variance_max'))} |")
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
