"""The evaluation table: accuracies per condition, averaged over orders, order variance, seen/unseen split."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.backends.generation import GenerationConfig
from steer_eval.scoring.prompts import load_prompts
from steer_eval.runs.runner import RECORDS_FILE, run
from steer_eval.training.token_eval import plan, summarize

REPO = Path(__file__).resolve().parents[1]

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
    summarize([records], tmp_path / "out")
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    german = table["singles"]["german"]
    assert german["text"]["accuracy"] == 0.75 and german["steering"]["accuracy"] == 0.5
    assert german["steering_over_text"] == pytest.approx(2 / 3)
    combo = table["pairs"]["german+words_10_50"]
    assert combo["seen"] is False
    composition = combo["conditions"]["steering/composition"]
    assert composition["mean"] == 0.75 and composition["order_delta"] == 0.5 and composition["best"] == 1.0
    assert table["pairs"]["spanish+words_10_50"]["seen"] is True
    assert table["pairs_aggregate"]["unseen|steering/composition"]["order_variance_max"] == 0.5
    markdown = (tmp_path / "out" / "table.md").read_text()
    german_line = next(line for line in markdown.splitlines() if line.startswith("| german | 4 |"))
    cells = [cell.strip() for cell in german_line.strip("|").split("|")]
    assert cells[2].startswith("75.0 (") and cells[3].startswith("50.0 (") and cells[4] == "66.7"
    # Side by side: each method's singles over the same behaviours; pairs by seen/unseen group.
    assert "| text instruction | 75.0 |" in markdown
    assert "| steering tokens, <and> | 50.0 |" in markdown and "| 0.0 | 75.0 | 0.0 |" in markdown


def test_plan_runs_through_the_runner_and_resumes(tiny_model_dir, tmp_path):
    requests = plan(load_prompts("bundled", "test"), ["german"], [("german", "words_10_50")], ["text"],
                    [("text", "concatenation")], 2, 2)
    assert len(requests) == 2 + 2 * 2  # 2 prompts; the pair in both orders
    output = tmp_path / RECORDS_FILE
    spec = BackendSpec("hf", str(tiny_model_dir))
    records = run(requests, spec, GenerationConfig(max_new_tokens=4), output, progress=False).records()
    assert {r.behaviors for r in records} == {("german",), ("german", "words_10_50"), ("words_10_50", "german")}
    run(requests, spec, GenerationConfig(max_new_tokens=4), output, progress=False)
    assert len(output.read_text().splitlines()) == len(records)  # resumed: nothing added


def test_script_generate_and_summarize(tiny_model_dir, tmp_path):
    script = [sys.executable, str(REPO / "trainers" / "evaluate_tokens.py")]
    generate = [*script, "generate", "--model", str(tiny_model_dir), "--singles", "german", "--single_methods",
                "text", "--n_single", "2", "--max_new_tokens", "3", "--out_dir", str(tmp_path / "records")]
    subprocess.run(generate, check=True, capture_output=True)
    subprocess.run([*script, "summarize", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "out")],
                   check=True, capture_output=True)
    assert json.loads((tmp_path / "out" / "table.json").read_text())["singles"]["german"]["text"]["n"] == 2
    changed = subprocess.run([*generate[:-4], "--max_new_tokens", "4", "--out_dir", str(tmp_path / "records")],
                             capture_output=True, text=True)
    assert changed.returncode == 2 and "max_new_tokens: 3 in the folder, 4 now" in changed.stderr


def test_compare_splits_table_and_refusals(tmp_path):
    test, topics, other = tmp_path / "test", tmp_path / "topics", tmp_path / "other"
    for folder in (test, topics, other):
        folder.mkdir()
    _records(test, "text", "composition", ("german",), [GERMAN, GERMAN, GERMAN, ENGLISH])
    _records(test, "steering", "composition", ("german",), [GERMAN, ENGLISH, GERMAN, ENGLISH])
    _records(topics, "text", "composition", ("german",), [GERMAN, GERMAN])
    _records(topics, "steering", "composition", ("german",), [GERMAN, ENGLISH])
    _records(other, "steering", "composition", ("german",), [GERMAN])  # one prompt, not the same two
    script = [sys.executable, str(REPO / "trainers" / "compare_splits.py")]
    columns = ["--column", "test", "text", "text", str(test), "--column", "test", "tokens", "steering", str(test),
               "--column", "new_topics", "text", "text", str(topics),
               "--column", "new_topics", "tokens", "steering", str(topics)]
    done = subprocess.run(script + columns + ["--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["splits"]["test"]["tokens"]["german"]["accuracy"] == 0.5
    assert table["splits"]["new_topics"]["text"]["german"]["accuracy"] == 1.0
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| german | 4 | 75.0 | 50.0 | 66.7 |" in markdown and "| german | 2 | 100.0 | 50.0 | 50.0 |" in markdown
    mixed = subprocess.run(script + columns[:10] + ["--column", "test", "other", "steering", str(other),
                                                    "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert mixed.returncode == 2 and "different prompts" in mixed.stderr and "Traceback" not in mixed.stderr
    missing = subprocess.run(script + ["--column", "test", "a", "text", str(tmp_path / "nope"), "--out",
                                       str(tmp_path / "y")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a folder of records" in missing.stderr
