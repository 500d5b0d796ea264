"""One aggregation rule: Δmax on a grid whose second order lacks prompts equals Δmax on the complete prompts only,
in `steer-eval analyze`, the notebook's loader and the lm-eval metric alike."""
import json

import pytest

from steer_eval.report.analysis import by_combination
from steer_eval.cli.main import main
from steer_eval.lmeval.tasks import best_order_accuracy, order_variance, score
from steer_eval.runs.records import Record, Request, append_records, load_records
from steer_eval.scoring.verdict import scorer_spec, verify

SPANISH_LOWER = "hoy hace muy buen tiempo y vamos a pasear por el parque porque el sol brilla mucho en el cielo."
ENGLISH = "The weather is very nice today and we will walk in the park later because the sun is shining."
# order spanish>lowercase: p1 ok, p2 ok, p3 x, p4 x; order lowercase>spanish: p1 ok, p2 x (p3, p4 never ran).
# Complete prompts p1, p2: accuracies 1.0 and 0.5 -> Δmax 0.5 (all records would give 0.5 and 0.5 -> 0).
OUTCOMES = [(("spanish", "lowercase"), "p1", SPANISH_LOWER), (("spanish", "lowercase"), "p2", SPANISH_LOWER),
            (("spanish", "lowercase"), "p3", ENGLISH), (("spanish", "lowercase"), "p4", ENGLISH),
            (("lowercase", "spanish"), "p1", SPANISH_LOWER), (("lowercase", "spanish"), "p2", ENGLISH)]


@pytest.fixture
def grid_folder(tmp_path):
    records = [Record(Request(prompt_id, f"prompt {prompt_id}", order), response,
                      verify(order, response).per_behavior, scorer_spec(order), {}, run="r1")
               for order, prompt_id, response in OUTCOMES]
    assert [r.followed for r in records] == [True, True, False, False, True, False]
    append_records(tmp_path / "records.jsonl", records)
    return tmp_path


def test_analyze_uses_complete_order_sets(grid_folder, capsys):
    assert main(["analyze", str(grid_folder), "--json"]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    assert summary["all"]["order_variance"] == pytest.approx(0.5)
    assert summary["all"]["best_order_accuracy"] == pytest.approx(1.0)
    assert summary["all"]["incomplete_records"] == 2
    assert summary["all"]["accuracy"] == pytest.approx((0.5 + 0.5) / 2)  # accuracy uses every record
    assert main(["analyze", str(grid_folder)]) == 0
    assert "| 50.0 | 50.0 | 2 |" in capsys.readouterr().out  # the table states the records left out (incomplete 2)


def test_notebook_loader_agrees(grid_folder):
    [result] = by_combination(load_records(grid_folder))  # what notebooks/order_variance.ipynb does
    assert result.order_delta_max == pytest.approx(0.5)
    assert result.complete_order_accuracy == {"lowercase>spanish": 0.5, "spanish>lowercase": 1.0}


def test_lm_eval_metric_agrees():
    outcomes = [score({"behaviors": list(order), "prompt_id": prompt_id}, response, orders=True)["order_variance"]
                for order, prompt_id, response in OUTCOMES]
    assert order_variance(outcomes) == pytest.approx(0.5)
    assert best_order_accuracy(outcomes) == pytest.approx(1.0)
