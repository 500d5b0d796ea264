"""The evaluation table: accuracies per condition, averaged over orders, order variance, seen/unseen split."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("evaluate_tokens", REPO / "trainers" / "evaluate_tokens.py")
evaluate_tokens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_tokens)

GERMAN = "Das Wetter ist heute sehr schön und wir gehen später im Park spazieren, weil die Sonne scheint."
ENGLISH = "The weather is very nice today and we will walk in the park later because the sun is shining."


def _records(folder, method, mode, behaviors, responses):
    path = folder / f"{method}-{mode}-{'+'.join(behaviors)}.jsonl"
    rows = [{"id": str(i), "prompt": "p", "behaviors": list(behaviors), "control_method": method, "mode": mode,
             "response": text, "followed": None} for i, text in enumerate(responses)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_numbers(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    _records(records, "text", "composition", ("german",), [GERMAN, GERMAN, GERMAN, ENGLISH])
    _records(records, "steering", "composition", ("german",), [GERMAN, ENGLISH, GERMAN, ENGLISH])
    _records(records, "steering", "composition", ("german", "words_10_50"), [GERMAN, GERMAN])
    _records(records, "steering", "composition", ("words_10_50", "german"), [GERMAN, ENGLISH])
    _records(records, "steering", "composition", ("spanish", "words_10_50"), [ENGLISH, ENGLISH])
    _records(records, "steering", "composition", ("words_10_50", "spanish"), [ENGLISH, ENGLISH])
    result = evaluate_tokens.main(["summarize", "--records", str(records), "--out", str(tmp_path / "out")])
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert result == 0
    german = table["singles"]["german"]
    assert german["text"]["accuracy"] == 0.75 and german["steering"]["accuracy"] == 0.5
    assert german["steering_over_text"] == pytest.approx(2 / 3)
    combo = table["pairs"]["german+words_10_50"]
    assert combo["seen"] is False
    composition = combo["conditions"]["steering/composition"]
    assert composition["mean"] == 0.75 and composition["order_delta"] == 0.5 and composition["best"] == 1.0
    assert table["pairs"]["spanish+words_10_50"]["seen"] is True
    assert table["pairs_aggregate"]["unseen|steering/composition"]["order_variance_max"] == 0.5
    assert "| german | 4 | 75.0 | 50.0 | – | 66.7 |" in (tmp_path / "out" / "table.md").read_text()


def test_generate_runs_the_grid_and_resumes(tiny_model_dir, tmp_path):
    args = ["generate", "--model", str(tiny_model_dir), "--singles", "german", "--single_methods", "text",
            "--pairs", "german+words_10_50", "--pair_conditions", "text/concatenation", "--n_single", "2",
            "--n_pair", "2", "--max_new_tokens", "4", "--out_dir", str(tmp_path)]
    assert evaluate_tokens.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 + 2 * 2  # 2 prompts; the pair in both orders
    assert {tuple(r["behaviors"]) for r in records} == {("german",), ("german", "words_10_50"),
                                                        ("words_10_50", "german")}
    assert evaluate_tokens.main(args) == 0  # resumed: nothing added
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == len(records)
