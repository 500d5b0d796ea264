"""Tables and plots of grid results, grouped by setting (control method, mode) and number of behaviours."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple

from steer_eval.report.analysis import summarize
from steer_eval.errors import UserError
from steer_eval.scoring.quality import measure
from steer_eval.runs.records import Record, judged_by_verifiers


class _Outcome(NamedTuple):
    """What a summary needs of a record: no response, no prompt text (memory stays small at a million records)."""
    behaviors: tuple[str, ...]
    prompt_id: str
    followed: bool
    per_behavior: dict[str, bool]


class _QualitySums:
    """Running sums of the records' quality fields (no per-record objects kept); a field missing from a record
    (older records, no fluency pass) is left out of that field's mean, not counted as 0."""

    FIELDS = ("repetition", "distinct_2", "hit_limit", "fluency")

    def __init__(self):
        self.records = 0
        self.sums = dict.fromkeys(self.FIELDS, 0.0)
        self.counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, quality: dict) -> None:
        if not quality:
            return
        self.records += 1
        for name in self.FIELDS:
            if quality.get(name) is not None:
                self.sums[name] += float(quality[name])
                self.counts[name] += 1

    def means(self) -> dict:
        """Means over the records that carry each field; empty when no record carries quality fields."""
        if not self.records:
            return {}
        return {"records": self.records, **{name: self.sums[name] / self.counts[name] if self.counts[name] else None
                                            for name in self.FIELDS}}


def _measured(record: Record) -> dict:
    """Quality of a record written before records carried it (not of simulated text): the fields a response
    alone gives; tokens and the limit need the model's tokenizer. A fluency score from a sidecar is kept."""
    return measure(record.response) if judged_by_verifiers(record) else {}


def group_summaries(records: Iterable[Record]) -> dict[tuple[str, str, int], dict]:
    """Summaries per (control method, mode, k), in one pass over the records (a stream is fine); a record is
    counted once even if a file holds it twice; records of two runs in one setting are refused. Each summary
    has `quality` (mean repetition, distinct-2, share at the token limit) when the records carry it."""
    groups: dict[tuple[str, str, int], dict[int, _Outcome]] = defaultdict(dict)
    quality: dict[tuple[str, str, int], _QualitySums] = defaultdict(_QualitySums)
    runs: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    shared: dict = {}  # one object per distinct order, prompt id and verdict set, however many records share it
    for record in records:
        # Text instructions are joined the same way whatever the mode, so text runs form one setting.
        mode = "-" if record.control_method == "text" else record.mode
        key = (record.control_method, mode, len(record.behaviors))
        identity = hash(record.key)
        if identity not in groups[key]:
            verdicts = tuple(record.per_behavior.items())
            groups[key][identity] = _Outcome(
                shared.setdefault(record.behaviors, record.behaviors),
                shared.setdefault(record.prompt_id, record.prompt_id),
                record.followed, shared.setdefault(verdicts, dict(verdicts)))
            measured = record.quality if "repetition" in record.quality else {**_measured(record), **record.quality}
            quality[key].add(measured)
        runs[key].add(record.run)
    for key, run_ids in runs.items():
        if len(run_ids) > 1:
            raise UserError(f"records of different runs ({', '.join(sorted(r or '?' for r in run_ids))}) share the "
                            f"setting {'/'.join(map(str, key))}; analyze each run's records separately")
    return {key: {**summarize(list(group.values())), "quality": quality[key].means()}
            for key, group in sorted(groups.items())}


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(summaries: dict[tuple[str, str, int], dict]) -> str:
    """One row per setting; best order and Δmax come from complete order sets only (`incomplete` = records left
    out). Quality columns when records carry them: mean repetition, distinct-2, % stopped by the token limit, and
    fluency (mean log-probability per token under the unsteered model, from `steer-eval score`)."""
    with_quality = any(s.get("quality") for s in summaries.values())
    header = ("| control | mode | k | n | combos | acc seen | acc unseen | acc all | best order | Δmax mean | Δmax max "
              "| incomplete |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    if with_quality:
        header, rule = header + " repetition | distinct-2 | at limit % | fluency |", rule + "---|---|---|---|"
    lines = [header, rule]
    for (control, mode, k), s in summaries.items():
        a = s["all"]
        row = (f"| {control} | {mode} | {k} | {s['generations']} | {a['combinations']} | "
               f"{_percent(s['seen'].get('accuracy'))} | {_percent(s['unseen'].get('accuracy'))} | "
               f"{_percent(a.get('accuracy'))} | {_percent(a.get('best_order_accuracy'))} | "
               f"{_percent(a.get('order_variance'))} | {_percent(a.get('order_variance_max'))} | "
               f"{a.get('incomplete_records', 0)} |")
        if with_quality:
            q = s.get("quality") or {}
            row += (f" {_fraction(q.get('repetition'))} | {_fraction(q.get('distinct_2'))} | "
                    f"{_percent(q.get('hit_limit'))} | {_fraction(q.get('fluency'))} |")
        lines.append(row)
    return "\n".join(lines)


def _fraction(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def plot(summaries: dict[tuple[str, str, int], dict], path: str | Path) -> Path:
    """Accuracy (seen/unseen), mean order variance and repetition against k, one line per setting, one legend
    for the figure; panels without data are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(c, m) for c, m, _ in summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    panels = [("seen", "accuracy", "accuracy, seen combinations", 100),
              ("unseen", "accuracy", "accuracy, unseen combinations", 100),
              ("all", "order_variance", "order variance Δmax (mean)", 100),
              ("quality", "repetition", "repetition (share covered by the longest repeat)", 1)]

    def points(split, metric, scale, control, mode):
        found = [(k, s.get(split, {}).get(metric)) for (c, m, k), s in summaries.items() if (c, m) == (control, mode)]
        return [(k, scale * v) for k, v in found if v is not None]

    # A panel without data (e.g. no seen combination in the run) is left out rather than drawn empty.
    panels = [p for p in panels if any(points(p[0], p[1], p[3], c, m) for c, m in settings)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for axis, (split, metric, title, scale) in zip(axes[0], panels):
        for control, mode in settings:
            line = points(split, metric, scale, control, mode)
            if line:
                axis.plot(*zip(*line), marker="o", color=colors[(control, mode)], label=control if mode == "-" else f"{control} ({mode})")
        axis.set_title(title)
        axis.set_xlabel("behaviours composed (k)")
        axis.set_xticks(sorted({k for _, _, k in summaries}))
        axis.set_ylabel("%" if scale == 100 else "share")
        axis.set_ylim(0, scale)
        axis.grid(alpha=0.3)
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    handles, labels = list(legend.values()), list(legend)
    figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=9, title="setting")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
