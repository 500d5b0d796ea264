"""Several runs side by side (`steer-eval compare`): one markdown file and the plots that compare them.

A run is one records source (a JSONL file, a folder of them or a .tar.gz). Its numbers per setting come from
`report.group_summaries`, so they are exactly what `steer-eval analyze` prints for that run alone; the per-order
accuracies behind the order heatmap are counted in the same single pass over the records.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from steer_eval.report.analysis import combination_key
from steer_eval.scoring.behaviors import BEHAVIORS
from steer_eval.errors import UserError
from steer_eval.runs.records import Record, iter_records
from steer_eval.runs.records import rejudge as judged_again
from steer_eval.report.tables import group_summaries

Setting = tuple[str, str, int]  # control method, mode ("-" for text, as in report.group_summaries), k
MAX_HEATMAP_ROWS = 40  # beyond this a panel shows the combinations whose orders differ most


@dataclass(frozen=True)
class Run:
    name: str
    source: Path
    summaries: dict[Setting, dict]
    order_accuracy: dict[Setting, dict[str, dict[str, float]]]  # combination -> "a>b" -> accuracy over its records

    @property
    def generations(self) -> int:
        return sum(s["generations"] for s in self.summaries.values())


def setting_label(control: str, mode: str) -> str:
    return control if mode == "-" else f"{control} ({mode})"


def default_name(source: str | Path) -> str:
    """The file or folder name without .jsonl/.tar.gz; a file called records is named after its folder."""
    path = Path(source).resolve()
    name = path.name.removesuffix(".tar.gz").removesuffix(".jsonl")
    return path.parent.name if name == "records" else name


class _OrderTally:
    """Hits per (setting, combination, order), each record counted once, as group_summaries counts it."""

    def __init__(self):
        self.counts: dict[Setting, dict[str, dict[str, list[int]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
        self.seen: dict[Setting, set[int]] = defaultdict(set)

    def watch(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            key = (record.control_method, "-" if record.control_method == "text" else record.mode,
                   len(record.behaviors))
            identity = hash(record.key)
            if identity not in self.seen[key]:
                self.seen[key].add(identity)
                hits = self.counts[key][combination_key(record.behaviors)][">".join(record.behaviors)]
                hits[0] += record.followed
                hits[1] += 1
            yield record

    def accuracy(self) -> dict[Setting, dict[str, dict[str, float]]]:
        return {key: {combination: {order: hits / total for order, (hits, total) in orders.items()}
                      for combination, orders in combinations.items()}
                for key, combinations in self.counts.items()}


def load_run(source: str | Path, name: str | None = None, rejudge: bool = False) -> Run:
    """One run's summaries; `rejudge`: judge every response again with this checkout's verifiers first."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source} does not exist; give a records JSONL file, a folder of them or a .tar.gz")
    tally = _OrderTally()
    records = iter_records(path)
    summaries = group_summaries(tally.watch(map(judged_again, records) if rejudge else records))
    if not summaries:
        raise UserError(f"no records in {source} (give a JSONL file, a folder of them or a .tar.gz)")
    return Run(name or default_name(path), path, summaries, tally.accuracy())


def load_runs(sources: Sequence[str | Path], names: Sequence[str] | None = None, rejudge: bool = False) -> list[Run]:
    if names is not None and len(names) != len(sources):
        raise UserError(f"{len(names)} --name for {len(sources)} runs; give one --name per run, in order, or none")
    chosen = list(names) if names is not None else [default_name(s) for s in sources]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise UserError(f"two runs would both be called {', '.join(duplicates)}; tell them apart with --name")
    return [load_run(source, name, rejudge) for source, name in zip(sources, chosen)]


# --- the markdown file ------------------------------------------------------------------------------------------

# Quality means that report.group_summaries adds when records carry quality fields (key, header, as percent).
# Judge scores go here too once the summaries carry them.
QUALITY_COLUMNS = (("repetition", "repetition", False), ("distinct_2", "distinct-2", False),
                   ("hit_limit", "at limit %", True))


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _settings(runs: Sequence[Run]) -> list[Setting]:
    return sorted({key for run in runs for key in run.summaries}, key=lambda s: (s[2], s[0], s[1]))


def _behaviors_in(runs: Sequence[Run], k: int) -> list[str]:
    found = {b for run in runs for (_, _, kk), s in run.summaries.items() if kk == k for b in s["per_behavior"]}
    return sorted(found, key=lambda b: (list(BEHAVIORS).index(b) if b in BEHAVIORS else len(BEHAVIORS), b))


def markdown(runs: Sequence[Run]) -> str:
    quality = [c for c in QUALITY_COLUMNS
               if any(c[0] in (s.get("quality") or {}) for run in runs for s in run.summaries.values())]
    lines = ["# Runs compared", ""]
    lines += [f"- **{run.name}**: `{run.source}` ({run.generations:,} generations)" for run in runs]
    lines += ["", "## Accuracy per setting", "",
              "Accuracy = every behaviour holds; best order and Δmax (order variance) from complete order sets only.",
              "", "| setting | k | run | n | combos | acc seen | acc unseen | acc all | best order | Δmax mean | "
              "Δmax max | incomplete |" + "".join(f" {c[1]} |" for c in quality),
              "|---" * (12 + len(quality)) + "|"]
    for setting in _settings(runs):
        for run in runs:
            s = run.summaries.get(setting)
            if s is None:
                continue
            a, q = s["all"], s.get("quality") or {}
            lines.append(
                f"| {setting_label(*setting[:2])} | {setting[2]} | {run.name} | {s['generations']} | "
                f"{a['combinations']} | {_pct(s['seen'].get('accuracy'))} | {_pct(s['unseen'].get('accuracy'))} | "
                f"{_pct(a.get('accuracy'))} | {_pct(a.get('best_order_accuracy'))} | {_pct(a.get('order_variance'))} | "
                f"{_pct(a.get('order_variance_max'))} | {a.get('incomplete_records', 0)} |"
                + "".join(f" {_pct(q.get(key)) if percent else '—' if q.get(key) is None else f'{q[key]:.2f}'} |"
                          for key, _, percent in quality))
    for k in sorted({s[2] for s in _settings(runs)}):
        columns = [(run, key) for key in _settings(runs) if key[2] == k for run in runs if key in run.summaries]
        lines += ["", f"## Per-behaviour accuracy, k = {k}" + (" (within compositions)" if k > 1 else ""), "",
                  "| behaviour | " + " | ".join(f"{run.name}: {setting_label(*key[:2])}" for run, key in columns)
                  + " |", "|---" * (len(columns) + 1) + "|"]
        for behavior in _behaviors_in(runs, k):
            lines.append(f"| {behavior} | " + " | ".join(
                _pct(run.summaries[key]["per_behavior"].get(behavior)) for run, key in columns) + " |")
        if k > 1:
            lines += ["", f"## Combinations, k = {k}: accuracy averaged over orders (Δ = best − worst order)", "",
                      "| combination | " + " | ".join(f"{run.name}: {setting_label(*key[:2])}"
                                                      for run, key in columns) + " |",
                      "|---" * (len(columns) + 1) + "|"]
            combos = sorted({c for run, key in columns for c in run.order_accuracy.get(key, {})})
            for combination in combos:
                cells = []
                for run, key in columns:
                    orders = run.order_accuracy.get(key, {}).get(combination)
                    cells.append("—" if not orders else f"{_pct(sum(orders.values()) / len(orders))} "
                                 f"(Δ {_pct(max(orders.values()) - min(orders.values()))})")
                lines.append(f"| {combination} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------------------------

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_figure(runs: Sequence[Run]):
    """Accuracy (seen, unseen, all), order variance and, when recorded, repetition against k: one line per run and
    setting (colour = setting, line style = run); panels without data are left out."""
    plt = _pyplot()
    settings = sorted({key[:2] for run in runs for key in run.summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    panels = [("seen", "accuracy", "accuracy, seen combinations", 100),
              ("unseen", "accuracy", "accuracy, unseen combinations", 100),
              ("all", "accuracy", "accuracy, all combinations", 100),
              ("all", "order_variance", "order variance Δmax (mean)", 100),
              ("quality", "repetition", "repetition (share covered by the longest repeat)", 1)]

    def line(run, setting, split, metric, scale):
        found = [(k, (s.get(split) or {}).get(metric)) for (c, m, k), s in sorted(run.summaries.items())
                 if (c, m) == setting]
        return [(k, scale * value) for k, value in found if value is not None]

    panels = [p for p in panels if any(line(run, s, p[0], p[1], p[3]) for run in runs for s in settings)]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for axis, (split, metric, title, scale) in zip(axes[0], panels):
        for r, run in enumerate(runs):
            for setting in settings:
                points = line(run, setting, split, metric, scale)
                if points:
                    axis.plot(*zip(*points), color=colors[setting], linestyle=_LINESTYLES[r % len(_LINESTYLES)],
                              marker=_MARKERS[r % len(_MARKERS)], label=f"{run.name}: {setting_label(*setting)}")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("behaviours composed (k)")
        axis.set_xticks(sorted({k for run in runs for _, _, k in run.summaries}))
        axis.set_ylabel("%" if scale == 100 else "share")
        axis.set_ylim(0, scale if metric == "accuracy" else None)
        axis.grid(alpha=0.3)
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    columns = min(len(legend), 4)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=columns, fontsize=8,
                  title="run: setting")
    figure.tight_layout(rect=(0, 0.06 + 0.045 * math.ceil(len(legend) / columns), 1, 1))
    return figure


def _orders(combination: str) -> list[str]:
    return [">".join(order) for order in itertools.permutations(combination.split("+"))]


def order_figure(runs: Sequence[Run]):
    """Accuracy per combination (rows) and order (columns), the orders of every run and setting side by side:
    one panel per k >= 2; None when no run has compositions."""
    plt = _pyplot()
    ks = sorted({key[2] for run in runs for key in run.summaries if key[2] >= 2})
    panels = []
    for k in ks:
        series = [(run, key) for key in _settings(runs) if key[2] == k for run in runs if run.order_accuracy.get(key)]
        spread: dict[str, float] = defaultdict(float)
        for run, key in series:
            for combination, orders in run.order_accuracy[key].items():
                spread[combination] = max(spread[combination], max(orders.values()) - min(orders.values()))
        shown = sorted(sorted(spread, key=lambda c: -spread[c])[:MAX_HEATMAP_ROWS])
        panels.append((k, series, shown, len(spread)))
    if not panels:
        return None
    widths = [len(series) * math.factorial(k) for k, series, _, _ in panels]
    figure, axes = plt.subplots(len(panels), 1, squeeze=False, layout="constrained",
                                figsize=(max(8.0, 0.5 * max(widths) + 4),
                                         sum(0.32 * len(shown) + 3.2 for _, _, shown, _ in panels)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    for axis, (k, series, shown, total) in zip(axes[:, 0], panels):
        orders = math.factorial(k)
        cells = [[100 * run.order_accuracy[key].get(combination, {}).get(order, math.nan)
                  for run, key in series for order in (_orders(combination))]
                 for combination in shown]
        image = axis.imshow(cells, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(cells):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    axis.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                              color="black" if value > 60 else "white")
        for boundary in range(orders, len(series) * orders, orders):
            axis.axvline(boundary - 0.5, color="white", linewidth=3)
        axis.set_yticks(range(len(shown)), shown, fontsize=7)
        order_names = ["as listed", "reversed"] if k == 2 else [str(j + 1) for j in range(orders)]
        axis.set_xticks(range(len(series) * orders), order_names * len(series), fontsize=7,
                        rotation=90 if k == 2 else 0)
        axis.set_xlabel("order of the behaviours" + ("" if k == 2 else " (permutation of the row's list)"))
        top = axis.secondary_xaxis("top")
        top.set_xticks([orders * i + (orders - 1) / 2 for i in range(len(series))],
                       [f"{run.name}: {setting_label(*key[:2])}" for run, key in series],
                       rotation=30, ha="left", fontsize=8)
        cut = f" ({len(shown)} of {total} combinations: those whose orders differ most)" if len(shown) < total else ""
        axis.set_title(f"accuracy per combination and order, k = {k}{cut}", fontsize=10)
        figure.colorbar(image, ax=axis, shrink=0.8, label="accuracy (%)")
    return figure


def behavior_figure(runs: Sequence[Run]):
    """Per-behaviour accuracy as grouped bars: one panel per k, one bar per run and setting (colour = setting, as in
    accuracy_by_k; hatching = run), one legend for the figure."""
    plt = _pyplot()
    ks = sorted({key[2] for run in runs for key in run.summaries})
    panels = [(k, _behaviors_in(runs, k)) for k in ks]
    panels = [(k, behaviors) for k, behaviors in panels if behaviors]
    if not panels:
        return None
    settings = sorted({key[:2] for run in runs for key in run.summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    hatches = {run.name: ("", "//", "..", "xx", "\\\\", "oo")[i % 6] for i, run in enumerate(runs)}
    figure, axes = plt.subplots(len(panels), 1, squeeze=False,
                                figsize=(max(10.0, 0.75 * max(len(b) for _, b in panels) + 3), 4.2 * len(panels)))
    for axis, (k, behaviors) in zip(axes[:, 0], panels):
        series = [(run, key) for key in _settings(runs) if key[2] == k for run in runs if key in run.summaries]
        width = 0.8 / len(series)
        for i, (run, key) in enumerate(series):
            values = [100 * run.summaries[key]["per_behavior"].get(b, math.nan) for b in behaviors]
            axis.bar([x - 0.4 + width * (i + 0.5) for x in range(len(behaviors))], values, width,
                     color=colors[key[:2]], hatch=hatches[run.name], edgecolor="white", linewidth=0.3,
                     label=f"{run.name}: {setting_label(*key[:2])}")
        axis.set_xticks(range(len(behaviors)), behaviors, rotation=30, ha="right", fontsize=8)
        axis.set_xlabel("behaviour")
        axis.set_ylabel("% of generations where it holds")
        axis.set_ylim(0, 100)
        axis.set_title(f"per-behaviour accuracy, k = {k}" + (" (within compositions)" if k > 1 else ""),
                       fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    legend = {label: handle for axis in axes[:, 0] for handle, label in zip(*axis.get_legend_handles_labels())}
    columns = min(len(legend), 4)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=columns, fontsize=8,
                  title="run: setting")
    figure.tight_layout(rect=(0, (0.05 + 0.035 * math.ceil(len(legend) / columns)) / len(panels) ** 0.5, 1, 1))
    return figure


def quality_figure(runs: Sequence[Run]):
    """Accuracy against each quality measure the records carry (repetition, fluency): one point per run, setting
    and k, so a setting that wins accuracy with degenerate text stands apart. None without quality data."""
    plt = _pyplot()
    measures = [("repetition", "repetition (lower is better)"), ("fluency", "fluency: mean log-prob/token")]
    points = {measure: [(run.name, key, s["all"].get("accuracy"), (s.get("quality") or {}).get(measure))
                        for run in runs for key, s in sorted(run.summaries.items())] for measure, _ in measures}
    measures = [(m, label) for m, label in measures if any(q is not None and a is not None
                                                          for _, _, a, q in points[m])]
    if not measures:
        return None
    settings = sorted({key[:2] for run in runs for key in run.summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    figure, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4.6), squeeze=False)
    names = [run.name for run in runs]
    for axis, (measure, label) in zip(axes[0], measures):
        for name, (control, mode, k), accuracy, value in points[measure]:
            if accuracy is not None and value is not None:
                axis.scatter(value, 100 * accuracy, color=colors[(control, mode)],
                             marker=_MARKERS[names.index(name) % len(_MARKERS)], s=50,
                             label=f"{name}: {setting_label(control, mode)}")
                axis.annotate(f"k={k}", (value, 100 * accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy, all combinations (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 3), fontsize=8,
                  title="run: setting")
    figure.tight_layout(rect=(0, 0.08 + 0.05 * math.ceil(len(legend) / 3), 1, 1))
    return figure


def write_comparison(runs: Sequence[Run], out_dir: str | Path) -> tuple[str, list[Path]]:
    """comparison.md and the PNGs that have data; returns the markdown and the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(runs)
    (out / "comparison.md").write_text(table, encoding="utf-8")
    written = [out / "comparison.md"]
    plt = _pyplot()
    for name, make in (("accuracy_by_k.png", accuracy_figure), ("order_heatmap.png", order_figure),
                       ("per_behavior.png", behavior_figure), ("accuracy_vs_quality.png", quality_figure)):
        figure = make(runs)
        if figure is not None:
            figure.savefig(out / name, dpi=120, bbox_inches="tight")
            plt.close(figure)
            written.append(out / name)
    return table, written
