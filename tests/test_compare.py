"""steer_eval.report.compare and `steer-eval compare`: numbers from records written here, figures, errors, the real grid."""
import subprocess
import sys
from pathlib import Path

import pytest

from steer_eval.report import compare
from steer_eval.report.tables import comparison_markdown, markdown_table
from steer_eval.errors import UserError
from steer_eval.runs.records import append_records, iter_records
from steer_eval.report import plots
from steer_eval.report.outcomes import group_summaries

SCRIPT = str(Path(sys.executable).parent / "steer-eval")
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
GRID = Path(__file__).resolve().parents[1] / "results" / "grid_2actors" / "records.jsonl"


def cli(*args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)


def row(prompt_id, behaviors, verdicts, control="steering", mode="composition"):
    return {"prompt_id": prompt_id, "prompt": "Why?", "behaviors": list(behaviors), "control_method": control,
            "mode": mode, "response": "…", "per_behavior": dict(zip(behaviors, verdicts))}


def write_run(path, pair_hits):
    """Singles german (2/2) and french (1/2); german+words_10_50 in both orders over 4 prompts: `pair_hits` of
    each order's 4 generations follow both behaviours (the other ones fail words_10_50)."""
    rows = [row("p1", ["german"], [True]), row("p2", ["german"], [True]),
            row("p1", ["french"], [True]), row("p2", ["french"], [False])]
    for order, hits in zip((["german", "words_10_50"], ["words_10_50", "german"]), pair_hits):
        rows += [row(f"p{i}", order, [True, True] if i < hits else
                     [True, False] if order[0] == "german" else [False, True]) for i in range(4)]
    append_records(path, rows)
    return path


@pytest.fixture
def two_runs(tmp_path):
    return [write_run(tmp_path / "a" / "records.jsonl", (3, 1)), write_run(tmp_path / "b.jsonl", (2, 2))]


def test_runs_are_summarised_as_analyze_summarises_them(two_runs):
    runs = compare.load_runs(two_runs)
    assert [r.name for r in runs] == ["a", "b"]  # a file called records is named after its folder
    a = runs[0]
    assert a.summaries == group_summaries(iter_records(two_runs[0]))
    [pair] = a.settings[("steering", "composition", 2)].combinations
    assert pair.order_accuracy == {"german>words_10_50": 0.75, "words_10_50>german": 0.25}
    assert a.summaries[("steering", "composition", 1)]["all"]["accuracy"] == 0.75  # mean of 1.0 and 0.5
    text = comparison_markdown(runs)
    assert "| steering | composition | 2 | a | 8 | 1 | — | 50.0 | 50.0 | 75.0 | 50.0 | 50.0 | 0 |" in text
    assert "| steering | composition | 2 | b | 8 | 1 | — | 50.0 | 50.0 | 50.0 | 0.0 | 0.0 | 0 |" in text
    assert "| german+words_10_50 | 50.0 (Δ 50.0) | 50.0 (Δ 0.0) |" in text
    assert "| french | 50.0 | 50.0 |" in text  # per-behaviour, k = 1
    # Records written without quality fields get the ones their response gives ("…": no words, no repeat).
    assert "| repetition | distinct-2 | at limit % |" in text and "| 0.00 | — | — |" in text


def test_figures_have_legends_and_labels(two_runs):
    runs = compare.load_runs(two_runs, ["first", "second"])
    accuracy = plots.accuracy_figure(runs)
    labels = [t.get_text() for t in accuracy.legends[0].get_texts()]
    assert labels == ["first: steering (composition)", "second: steering (composition)"]
    assert [a.get_title() for a in accuracy.axes] == ["accuracy, seen combinations", "accuracy, unseen combinations",
                                                      "accuracy, all combinations", "order variance Δmax (mean)",
                                                      "repetition (share covered by the longest repeat)"]
    assert all(a.get_xlabel() == "behaviours composed (k)" for a in accuracy.axes)
    orders = plots.order_figure(runs)
    heatmap = orders.axes[0]
    assert heatmap.images[0].get_array().tolist() == [[75.0, 25.0, 50.0, 50.0]]
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["german+words_10_50"]
    assert "accuracy (%)" in [a.get_ylabel() for a in orders.axes]  # its colour bar
    bars = plots.behavior_figure(runs)
    assert len(bars.axes) == 2 and [t.get_text() for t in bars.legends[0].get_texts()] == labels


def test_write_comparison_leaves_out_plots_without_data(tmp_path):
    singles = tmp_path / "singles.jsonl"
    append_records(singles, [row("p1", ["german"], [True]), row("p1", ["german"], [False], control="text")])
    table, written = compare.write_comparison(compare.load_runs([singles]), tmp_path / "out")
    assert [p.name for p in written] == ["comparison.md", "accuracy_by_k.png", "per_behavior.png",
                                         "accuracy_vs_quality.png"]
    assert (tmp_path / "out" / "comparison.md").read_text() == table
    assert all(p.read_bytes()[:8] == PNG_HEADER for p in written[1:])


def test_bad_input_is_a_user_error(tmp_path, two_runs):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no records in"):
        compare.load_runs([tmp_path / "empty.jsonl"])
    with pytest.raises(UserError, match="does not exist"):
        compare.load_runs([tmp_path / "missing.tar.gz"])
    with pytest.raises(UserError, match="1 --name for 2 runs"):
        compare.load_runs(two_runs, ["one"])
    with pytest.raises(UserError, match="both be called x"):
        compare.load_runs(two_runs, ["x", "x"])
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        compare.load_runs([tmp_path / "broken.tar.gz"])


def test_cli_compare_writes_the_table_and_pngs(two_runs, tmp_path):
    result = cli("compare", *map(str, two_runs), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Runs compared")
    for name in ("accuracy_by_k.png", "order_heatmap.png", "per_behavior.png", "accuracy_vs_quality.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_HEADER


def test_quality_figure_places_each_setting_by_accuracy_and_repetition(tmp_path):
    records = tmp_path / "records.jsonl"
    salad = dict(row("p1", ["german"], [True]), response="la cidade de la cidade de la cidade")
    fine = dict(row("p1", ["german"], [False], control="text"), response="Der Himmel ist heute blau.")
    append_records(records, [salad, fine])
    figure = plots.quality_figure(compare.load_runs([records], ["run"]))
    (axis,) = figure.axes
    offsets = {tuple(c.get_offsets()[0]) for c in axis.collections}
    assert offsets == {(1.0, 100.0), (0.0, 0.0)}  # steering: all followed, all repeated; text: neither
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["run: steering (composition)", "run: text"]


@pytest.mark.parametrize("runs, message", [
    (["/no/such/records.jsonl"], "/no/such/records.jsonl does not exist"),
    (["EMPTY"], "no records in"),
])
def test_cli_compare_errors_are_one_line(runs, message, tmp_path):
    (tmp_path / "empty").mkdir()
    runs = [str(tmp_path / "empty") if r == "EMPTY" else r for r in runs]
    result = cli("compare", *runs, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not GRID.is_file(), reason="the committed grid records are not in this checkout")
def test_real_grid_matches_its_committed_table():
    """results/grid_2actors/table.md is `steer-eval analyze` of these records (scorer 1): compare agrees."""
    run = compare.load_run(GRID)
    assert run.name == "grid_2actors" and run.generations == 4350
    text = comparison_markdown([run])
    assert "| steering | composition | 2 | 1100 | 11 | " in text  # one run: no run column
    s = run.summaries[("steering", "composition", 2)]["all"]
    assert round(100 * s["accuracy"], 1) == 52.7 and round(100 * s["order_variance"], 1) == 9.1
    # Each combination was run in both orders on the same 50 prompts.
    pairs = run.settings[("steering", "composition", 2)].combinations
    assert len(pairs) == 11 and all(len(r.complete_order_accuracy) == 2 and not r.incomplete_records for r in pairs)


def test_delta_follows_complete_order_sets(tmp_path):
    """german+words_10_50: order 1 holds on p0, p1 (of p0-p3), order 2 ran on p0, p1 only and holds on p0. Over all
    records the orders score 50 and 50 (Δ 0, what compare printed before); on the prompts run in both orders
    they score 100 and 50: Δ 50, as `analyze` reports."""
    path = tmp_path / "records.jsonl"
    rows = [row(f"p{i}", ["german", "words_10_50"], [True, i < 2]) for i in range(4)]
    rows += [row("p0", ["words_10_50", "german"], [True, True]), row("p1", ["words_10_50", "german"], [False, True])]
    append_records(path, rows)
    run = compare.load_run(path)
    text = comparison_markdown([run])
    assert "| german+words_10_50 | 50.0 (Δ 50.0) |" in text
    assert "| steering | composition | 2 | 6 | 1 | — | 50.0 | 50.0 | 100.0 | 50.0 | 50.0 | 2 |" in text
    assert markdown_table(run.summaries) in text  # analyze's table is compare's of one run
    [pair] = run.settings[("steering", "composition", 2)].combinations
    assert pair.order_accuracy == {"german>words_10_50": 0.5, "words_10_50>german": 0.5}
    assert pair.order_delta_max == 0.5 and pair.incomplete_records == 2
    heatmap = plots.order_figure([run]).axes[0]
    assert heatmap.images[0].get_array().tolist() == [[100.0, 50.0]]  # the prompts run in both orders


def test_an_incomplete_order_set_has_no_delta(tmp_path):
    path = tmp_path / "records.jsonl"
    append_records(path, [row("p0", ["german", "words_10_50"], [True, True]),
                          row("p1", ["german", "words_10_50"], [True, False])])
    text = comparison_markdown([compare.load_run(path)])
    assert "| german+words_10_50 | 50.0 (Δ —) |" in text  # before: Δ 0.0 from the one order there is
