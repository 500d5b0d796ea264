"""Quality measures of a response, and how summaries and plots carry them."""
import json

import pytest

from steer_eval.scoring.quality import distinct_n, measure, repetition, words
from steer_eval.runs.records import Record, Request
from steer_eval.report.outcomes import group_summaries
from steer_eval.report.plots import plot
from steer_eval.report.tables import markdown_table


@pytest.mark.parametrize("text, expected", [
    ("", 0.0),
    ("one", 0.0),
    ("no word repeats here at all", 0.0),
    ("a b c a b c a b c", 1.0),  # the longest repeat "a b c a b c" occurs at 0 and 3: every word covered
    ("the cat saw the dog", 0.4),  # "the" twice
    ("El tramo de la cidade de la cidade de la cidade", 9 / 11),  # "de la cidade de la cidade" at 2 and 5
])
def test_repetition(text, expected):
    assert repetition(words(text)) == pytest.approx(expected)


def test_repetition_of_a_degenerate_megabyte_is_fast_and_total():
    assert repetition(words("la cidade de " * 70_000)) == 1.0


def test_distinct_n():
    assert distinct_n(words("a b a b"), 1) == 0.5
    assert distinct_n(words("a b a b"), 2) == pytest.approx(2 / 3)
    assert distinct_n(words("a"), 2) is None


def test_measure_counts_tokens_and_the_limit():
    quality = measure("one two three", count_tokens=lambda text: 7, max_new_tokens=7)
    assert quality == {"words": 3, "distinct_1": 1.0, "distinct_2": 1.0, "repetition": 0.0, "tokens": 7,
                       "hit_limit": True}
    assert measure("one two three", lambda text: 6, 7)["hit_limit"] is False
    assert "tokens" not in measure("one two three")


def _record(prompt_id, behaviors, followed, quality):
    return Record(Request(prompt_id, "p", behaviors, "text"), "r", {b: followed for b in behaviors},
                  {"scorer": "steer_eval.scoring.verify", "version": 2}, {}, run="r1", quality=quality)


def test_summaries_average_quality_once_per_record_and_round_trip():
    records = [_record("p1", ["german"], True, {"repetition": 0.2, "distinct_2": 0.9, "hit_limit": False}),
               _record("p2", ["german"], False, {"repetition": 0.8, "distinct_2": 0.3, "hit_limit": True})]
    records.append(records[1])  # a duplicate line counts once
    assert Record.from_json(json.loads(json.dumps(records[0].to_json()))).quality == records[0].quality
    quality = group_summaries(records)[("text", "-", 1)]["quality"]
    assert quality == {"records": 2, "repetition": pytest.approx(0.5), "distinct_2": pytest.approx(0.6),
                       "hit_limit": 0.5, "fluency": None}
    table = markdown_table(group_summaries(records))
    assert "repetition | distinct-2 | at limit % | fluency |" in table and "| 0.50 | 0.60 | 50.0 | — |" in table
    legacy = _record("p1", ["german"], True, {})  # written before quality: measured from its response ("r")
    assert group_summaries([legacy])[("text", "-", 1)]["quality"]["repetition"] == 0.0
    simulated = Record(legacy.request, "r", {"german": True}, {"scorer": "steer_eval.backends.simulate"}, {})
    assert "repetition" not in markdown_table(group_summaries([simulated]))  # simulated text has no quality


def test_plot_leaves_out_empty_panels_and_has_one_legend(tmp_path):
    import matplotlib.pyplot as plt
    records = [_record("p1", ["german"], True, {"repetition": 0.1}),  # german is unseen: no seen panel
               Record(Request("p1", "p", ["german"], "steering"), "r", {"german": False}, {}, {}, run="r1")]
    figures = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *args, **kwargs: figures.append(self) or original(self, *args, **kwargs)
    try:
        path = plot(group_summaries(records), tmp_path / "plot.png")
    finally:
        plt.Figure.savefig = original
    assert path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = figures
    assert [axis.get_title() for axis in figure.axes] == ["accuracy, unseen combinations",
                                                          "repetition (share covered by the longest repeat)"]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["steering (composition)", "text"]
