"""The figures of results, for `compare` (every run side by side) and `analyze --plot` (one run): accuracy and order
variance against k, accuracy per combination and order, per-behaviour accuracy, accuracy against quality. Each has
axis labels and one legend for the figure; panels without data are left out."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

from steer_eval.report.outcomes import Run, Setting, SettingSummary, behaviors_in, run_label, settings_by_k

MAX_HEATMAP_ROWS = 40  # beyond this a panel shows the combinations whose orders differ most
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _legend_title(runs: Sequence[Run]) -> str:
    return "run: setting" if any(run.name for run in runs) else "setting"


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display is ever needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_figure(runs: Sequence[Run]):
    """Accuracy (seen, unseen, all), order variance and, when recorded, repetition against k: one line per run and
    setting (colour = setting, line style = run); panels without data are left out."""
    plt = pyplot()
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
    if not {"seen", "unseen"} <= {split for split, metric, _, _ in panels if metric == "accuracy"}:
        panels = [p for p in panels if p[:2] != ("all", "accuracy")]  # it would repeat the seen or unseen panel
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for axis, (split, metric, title, scale) in zip(axes[0], panels):
        for r, run in enumerate(runs):
            for setting in settings:
                points = line(run, setting, split, metric, scale)
                if points:
                    axis.plot(*zip(*points), color=colors[setting], linestyle=_LINESTYLES[r % len(_LINESTYLES)],
                              marker=_MARKERS[r % len(_MARKERS)], label=run_label(run, *setting))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("behaviours composed (k)")
        axis.set_xticks(sorted({k for run in runs for _, _, k in run.summaries}))
        axis.set_ylabel("%" if scale == 100 else "share")
        axis.set_ylim(0, scale if metric == "accuracy" else None)
        axis.grid(alpha=0.3)
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    columns = min(len(legend), 4)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=columns, fontsize=8,
                  title=_legend_title(runs))
    figure.tight_layout(rect=(0, 0.06 + 0.045 * math.ceil(len(legend) / columns), 1, 1))
    return figure


def _orders(combination: str) -> list[str]:
    return [">".join(order) for order in itertools.permutations(combination.split("+"))]


def order_figure(runs: Sequence[Run]):
    """Accuracy per combination (rows) and order (columns), the orders of every run and setting side by side:
    one panel per k >= 2; None when no run has compositions."""
    plt = pyplot()
    ks = sorted({key[2] for run in runs for key in run.summaries if key[2] >= 2})
    panels = []
    for k in ks:
        series = [(run, key) for run, key in settings_by_k(runs, k) if run.settings[key].combinations]
        spread: dict[str, float] = {}  # Δmax on the complete order set; -1 where the set is incomplete
        for run, key in series:
            for result in run.settings[key].combinations:
                delta = -1.0 if result.order_delta_max is None else result.order_delta_max
                spread[result.combination] = max(spread.get(result.combination, -1.0), delta)
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
        # On the prompts run in every order where the set is complete, so cells differ by the Δ the tables give.
        accuracy = [{r.combination: r.complete_order_accuracy or r.order_accuracy for r in run.settings[key].combinations}
                    for run, key in series]
        cells = [[100 * found.get(combination, {}).get(order, math.nan)
                  for found in accuracy for order in _orders(combination)]
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
                       [run_label(run, *key[:2]) for run, key in series],
                       rotation=30, ha="left", fontsize=8)
        cut = f" ({len(shown)} of {total} combinations: those whose orders differ most)" if len(shown) < total else ""
        axis.set_title(f"accuracy per combination and order, k = {k}{cut}", fontsize=10)
        figure.colorbar(image, ax=axis, shrink=0.8, label="accuracy (%)")
    return figure


def behavior_figure(runs: Sequence[Run]):
    """Per-behaviour accuracy as grouped bars: one panel per k, one bar per run and setting (colour = setting, as in
    accuracy_by_k; hatching = run), one legend for the figure."""
    plt = pyplot()
    ks = sorted({key[2] for run in runs for key in run.summaries})
    panels = [(k, behaviors_in(runs, k)) for k in ks]
    panels = [(k, behaviors) for k, behaviors in panels if behaviors]
    if not panels:
        return None
    settings = sorted({key[:2] for run in runs for key in run.summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    hatches = {run.name: ("", "//", "..", "xx", "\\\\", "oo")[i % 6] for i, run in enumerate(runs)}
    figure, axes = plt.subplots(len(panels), 1, squeeze=False,
                                figsize=(max(10.0, 0.75 * max(len(b) for _, b in panels) + 3), 4.2 * len(panels)))
    for axis, (k, behaviors) in zip(axes[:, 0], panels):
        series = settings_by_k(runs, k)
        width = 0.8 / len(series)
        for i, (run, key) in enumerate(series):
            values = [100 * run.summaries[key]["per_behavior"].get(b, math.nan) for b in behaviors]
            axis.bar([x - 0.4 + width * (i + 0.5) for x in range(len(behaviors))], values, width,
                     color=colors[key[:2]], hatch=hatches[run.name], edgecolor="white", linewidth=0.3,
                     label=run_label(run, *key[:2]))
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
                  title=_legend_title(runs))
    figure.tight_layout(rect=(0, (0.05 + 0.035 * math.ceil(len(legend) / columns)) / len(panels) ** 0.5, 1, 1))
    return figure


def quality_figure(runs: Sequence[Run]):
    """Accuracy against each quality measure the records carry (repetition, fluency): one point per run, setting
    and k, so a setting that wins accuracy with degenerate text stands apart. None without quality data."""
    plt = pyplot()
    measures = [("repetition", "repetition (lower is better)"), ("fluency", "fluency: mean log-prob/token")]
    points = {measure: [(run, key, s["all"].get("accuracy"), (s.get("quality") or {}).get(measure))
                        for run in runs for key, s in sorted(run.summaries.items())] for measure, _ in measures}
    measures = [(m, label) for m, label in measures if any(q is not None and a is not None
                                                          for _, _, a, q in points[m])]
    if not measures:
        return None
    settings = sorted({key[:2] for run in runs for key in run.summaries})
    colors = {setting: f"C{i % 10}" for i, setting in enumerate(settings)}
    figure, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4.6), squeeze=False)
    for axis, (measure, label) in zip(axes[0], measures):
        for run, (control, mode, k), accuracy, value in points[measure]:
            if accuracy is not None and value is not None:
                axis.scatter(value, 100 * accuracy, color=colors[(control, mode)],
                             marker=_MARKERS[runs.index(run) % len(_MARKERS)], s=50,
                             label=run_label(run, control, mode))
                axis.annotate(f"k={k}", (value, 100 * accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy, all combinations (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 3), fontsize=8,
                  title=_legend_title(runs))
    figure.tight_layout(rect=(0, 0.08 + 0.05 * math.ceil(len(legend) / 3), 1, 1))
    return figure


FIGURES = (("accuracy_by_k.png", accuracy_figure), ("order_heatmap.png", order_figure),
           ("per_behavior.png", behavior_figure), ("accuracy_vs_quality.png", quality_figure))


def write_figures(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """The PNGs of FIGURES that have data, in `out_dir`; returns their paths."""
    plt = pyplot()
    written = []
    for name, make in FIGURES:
        figure = make(runs)
        if figure is not None:
            figure.savefig(out_dir / name, dpi=120, bbox_inches="tight")
            plt.close(figure)
            written.append(out_dir / name)
    return written


def plot(summaries: dict[Setting, dict], path: str | Path) -> Path:
    """accuracy_figure of one run's summaries (`report.outcomes.group_summaries`), written to `path`."""
    plt = pyplot()
    figure = accuracy_figure([Run("", None, {key: SettingSummary(summary, []) for key, summary in summaries.items()})])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
