"""Teacher-data builder on the tiny random Llama: records, resume, filter, refusal of the test split."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_data", REPO / "trainers" / "build_data.py")
build_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_data)


def _run(tiny_model_dir, out_dir, *extra):
    return build_data.main(["--model", str(tiny_model_dir), "--behaviors", "spanish", "words_10_50", "--pairs", "seen",
                            "--limit", "2", "--samples", "2", "--max_new_tokens", "6", "--temperature", "0.7",
                            "--out_dir", str(out_dir), *extra])


def test_records_resume_and_filter(tiny_model_dir, tmp_path, capsys):
    assert _run(tiny_model_dir, tmp_path) == 0
    single = json.loads((tmp_path / "language" / "spanish_train.json").read_text())
    pair = json.loads((tmp_path / "and" / "spanish+words_10_50_train.json").read_text())
    assert len(single) == len(pair) == 4  # 2 prompts x 2 samples
    record = single[0]
    assert record["behaviors"] == ["spanish"] and record["prompt"] and isinstance(record["response"], str)
    from steer_eval.behaviors import get_behavior
    assert record["instruction"].rstrip(".") in get_behavior("spanish").instructions
    assert {tuple(r["behaviors"]) for r in pair} <= {("spanish", "words_10_50"), ("words_10_50", "spanish")}
    assert all(" and " in r["instruction"] for r in pair)
    from steer_eval.scoring import verify
    assert all(r["followed"] == verify(r["behaviors"], r["response"]).followed for r in single + pair)

    progress = tmp_path / "language" / "spanish_train.all.jsonl"
    lines = progress.read_text().splitlines()
    capsys.readouterr()
    assert _run(tiny_model_dir, tmp_path, "--filter") == 0
    assert "0 to generate" in capsys.readouterr().err  # resumed: nothing generated twice
    assert progress.read_text().splitlines() == lines
    filtered = json.loads((tmp_path / "language" / "spanish_train.json").read_text())
    assert filtered == [r for r in single if r["followed"]]


def test_test_split_is_refused(tiny_model_dir, tmp_path, capsys):
    assert _run(tiny_model_dir, tmp_path, "--split", "test") == 2
    assert "held out" in capsys.readouterr().err
