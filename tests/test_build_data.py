"""Teacher data on the tiny random Llama: records through the one runner, resume, filter, held-out splits refused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.scoring.behaviors import get_behavior
from steer_eval.backends.generation import GenerationConfig
from steer_eval.runs.records import Record, read_records
from steer_eval.scoring.verdict import verify
from steer_eval.training.teacher import build

REPO = Path(__file__).resolve().parents[1]


def _build(tiny_model_dir, out_dir, **options):
    return build(["spanish", "words_10_50"], pairs=["seen"], spec=BackendSpec("hf", str(tiny_model_dir)),
                 config=GenerationConfig(max_new_tokens=6, temperature=0.7), limit=2, samples=2, out_dir=out_dir,
                 progress=False, **options)


def test_records_resume_and_filter(tiny_model_dir, tmp_path):
    _build(tiny_model_dir, tmp_path)
    single = json.loads((tmp_path / "language" / "spanish_train.json").read_text())
    pair = json.loads((tmp_path / "and" / "spanish+words_10_50_train.json").read_text())
    assert len(single) == len(pair) == 4  # 2 prompts x 2 samples
    record = Record.from_json(single[0])  # training files hold the one record type
    assert record.behaviors == ("spanish",) and record.request.prompt and isinstance(record.response, str)
    assert record.instruction.rstrip(".") in get_behavior("spanish").instructions
    assert {r.request.sample for r in map(Record.from_json, single)} == {0, 1}
    assert {tuple(r["behaviors"]) for r in pair} <= {("spanish", "words_10_50"), ("words_10_50", "spanish")}
    assert all(" and " in r["instruction"] for r in pair)
    assert all(r["followed"] == verify(r["behaviors"], r["response"]).followed for r in single + pair)
    # samples of one prompt get their own sampling seed
    assert {r["generation"]["seed"] for r in single} == {0, 1}

    records_file = tmp_path / "records_train.jsonl"
    lines = records_file.read_text().splitlines()
    assert len(lines) == 12 and len(list(read_records(records_file))) == 12
    _build(tiny_model_dir, tmp_path, keep_failed=False)
    assert records_file.read_text().splitlines() == lines  # resumed: nothing generated twice
    filtered = json.loads((tmp_path / "language" / "spanish_train.json").read_text())
    assert filtered == [r for r in single if r["followed"]]


@pytest.mark.parametrize("split", ["test", "new_topics"])
def test_script_refuses_the_held_out_splits(tmp_path, split):
    result = subprocess.run([sys.executable, str(REPO / "trainers" / "build_data.py"), "--behaviors", "german",
                             "--split", split, "--out_dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "held out" in result.stderr and "Traceback" not in result.stderr
