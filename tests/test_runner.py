"""The one runner on the tiny model: resume exactly once, refuse a different run, never mix, Ray = in-process."""
import json
import shutil

import pytest
import torch

from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.errors import RunMismatchError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.runs.grid import build_grid
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.runs.records import Request, read_rows
from steer_eval.runs.identity import manifest_path
from steer_eval.runs.runner import RECORDS_FILE, run
from steer_eval.steering.tokens import TokenError, TokenStore

CONFIG = GenerationConfig(max_new_tokens=4)


def _items(control_method="text"):
    return list(build_grid(bundled_prompts("test")[:3], [1, 2], [control_method], ["composition"],
                      only=[["spanish"], ["spanish", "lowercase"]]))


def _spec(tiny_model_dir, tokens_dir=None):
    return BackendSpec("hf", str(tiny_model_dir), None if tokens_dir is None else str(tokens_dir),
                       options={"batch_size": 8})


def _lines(path):
    return path.read_text().splitlines()


def test_in_process_then_resume_exactly_once(tiny_model_dir, tmp_path, tokenizer):
    items, output = _items(), tmp_path / RECORDS_FILE
    partial = run(items[:4], _spec(tiny_model_dir), CONFIG, output, chunk_size=2, progress=False).records()
    assert len(partial) == 4
    records = run(items, _spec(tiny_model_dir), CONFIG, output, chunk_size=2, progress=False).records()
    assert len(_lines(output)) == len(items) == len(records) == 9  # the first four were not generated again
    assert records[:4] == partial
    assert [r.behaviors for r in records] == [i.behaviors for i in items]
    assert all("Spanish" in r.instruction for r in records)
    for record in records:  # quality is measured on every record (the tiny model shares the default tokenizer)
        assert record.quality["tokens"] == len(tokenizer(record.response, add_special_tokens=False)["input_ids"])
        assert record.quality["hit_limit"] is (record.quality["tokens"] >= 4)
        assert 0 <= record.quality["repetition"] <= 1
    manifest = json.loads(manifest_path(output).read_text())
    assert {r.run for r in records} == {manifest["run"]}
    assert manifest["identity"]["generation"]["max_new_tokens"] == 4
    assert manifest["identity"]["model_fingerprint"]
    assert run(items, _spec(tiny_model_dir), CONFIG, output, progress=False).records() == records  # complete: nothing runs
    assert len(_lines(output)) == 9


def test_changed_control_method_is_kept_apart(tiny_model_dir, tiny_tokens_dir, tmp_path):
    """The issue's first case: text records must never be returned as the steering result."""
    output = tmp_path / RECORDS_FILE
    spec = _spec(tiny_model_dir, tiny_tokens_dir)
    text = run(_items("text"), spec, CONFIG, output, progress=False).records()
    steering = run(_items("steering"), spec, CONFIG, output, progress=False).records()
    assert {r.control_method for r in text} == {"text"} and {r.control_method for r in steering} == {"steering"}
    assert all(r.steering and r.instruction is None for r in steering)
    assert len(_lines(output)) == 18
    again = run(_items("steering"), spec, CONFIG, output, progress=False).records()
    assert again == steering and len(_lines(output)) == 18


def test_changed_behaviours_are_new_evaluations(tiny_model_dir, tmp_path):
    output = tmp_path / RECORDS_FILE
    prompts = bundled_prompts("test")[:2]
    first = run([Request(p.id, p.prompt, ("german",), "text") for p in prompts], _spec(tiny_model_dir), CONFIG,
                output, progress=False).records()
    second = run([Request(p.id, p.prompt, ("french", "uppercase"), "text") for p in prompts], _spec(tiny_model_dir),
                 CONFIG, output, progress=False).records()
    assert [r.behaviors for r in first] == [("german",)] * 2
    assert [r.behaviors for r in second] == [("french", "uppercase")] * 2
    assert set(second[0].per_behavior) == {"french", "uppercase"}


def test_changed_generation_settings_are_refused(tiny_model_dir, tmp_path):
    output = tmp_path / RECORDS_FILE
    run(_items()[:2], _spec(tiny_model_dir), CONFIG, output, progress=False)
    before = output.read_bytes()
    with pytest.raises(RunMismatchError, match="generation max_new_tokens: 4 in the folder, 5 now.*--restart"):
        run(_items(), _spec(tiny_model_dir), GenerationConfig(max_new_tokens=5), output, progress=False)
    with pytest.raises(RunMismatchError, match="generation temperature"):
        run(_items(), _spec(tiny_model_dir), GenerationConfig(max_new_tokens=4, temperature=0.5), output,
            progress=False)
    with pytest.raises(RunMismatchError, match="dtype"):
        run(_items(), BackendSpec("hf", str(tiny_model_dir), options={"dtype": "bfloat16"}), CONFIG, output,
            progress=False)
    assert output.read_bytes() == before  # refused before anything was written


def test_changed_tokens_are_refused_and_restart_keeps_the_old_records(tiny_model_dir, tiny_tokens_dir, tmp_path):
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_tokens_dir, tokens)
    output = tmp_path / "grid" / RECORDS_FILE
    items = _items("steering")
    run(items, _spec(tiny_model_dir, tokens), CONFIG, output, progress=False)
    store = TokenStore(tokens)
    retrained = store.load("spanish")
    retrained.vector.add_(torch.ones_like(retrained.vector))
    store.save(retrained)
    with pytest.raises(RunMismatchError, match=r"steering token spanish: vector \w+ in the folder, \w+ now \(retrained"):
        run(items, _spec(tiny_model_dir, tokens), CONFIG, output, progress=False)
    fresh = run(items, _spec(tiny_model_dir, tokens), CONFIG, output, progress=False, restart=True).records()
    assert len(_lines(output)) == len(fresh) == 9
    kept = [p for p in output.parent.iterdir() if ".replaced-" in p.name]
    assert sorted(p.name.split(".replaced-")[0] for p in kept) == ["records.jsonl", "records.manifest.json"]


def test_missing_tokens_are_named_before_the_model_loads(tmp_path):
    # A model folder that does not exist: the token check must come first, so no load is attempted.
    spec = BackendSpec("hf", str(tmp_path / "no-such-model"), str(tmp_path / "empty"))
    with pytest.raises(TokenError, match="needs steering tokens <and>, lowercase, spanish"):
        run(_items("steering"), spec, CONFIG, tmp_path / RECORDS_FILE, progress=False)


def test_a_prompt_id_with_other_text_is_refused(tiny_model_dir, tmp_path):
    output = tmp_path / RECORDS_FILE
    run([Request("0", "Why is the sky blue?", ("german",), "text")], _spec(tiny_model_dir), CONFIG, output,
        progress=False)
    with pytest.raises(RunMismatchError, match="prompt id '0' with another prompt text"):
        run([Request("0", "How do bees fly?", ("german",), "text")], _spec(tiny_model_dir), CONFIG, output,
            progress=False)


def test_records_without_a_manifest_are_refused(tiny_model_dir, tmp_path):
    output = tmp_path / RECORDS_FILE
    output.write_text(json.dumps({"id": "x", "prompt": "p", "behaviors": ["german"], "response": "r"}) + "\n")
    with pytest.raises(RunMismatchError, match="no manifest"):
        run(_items(), _spec(tiny_model_dir), CONFIG, output, progress=False)


def test_a_last_line_cut_short_is_rewritten(tiny_model_dir, tmp_path, caplog):
    items, output = _items(), tmp_path / RECORDS_FILE
    run(items[:3], _spec(tiny_model_dir), CONFIG, output, progress=False)
    lines = _lines(output)
    output.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # a crash in the middle of the third line
    records = run(items, _spec(tiny_model_dir), CONFIG, output, progress=False).records()
    assert "cut short" in caplog.text
    rows = list(read_rows(output))
    assert len(rows) == len(_lines(output)) == len(records) == 9
    assert sorted(Request.from_json(r).key for r in rows) == sorted(i.key for i in items)


def test_without_output_nothing_is_written(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = run(_items()[:2], _spec(tiny_model_dir), CONFIG, progress=False).records()
    assert len(records) == 2 and len(records[0].run) == 12 and not list(tmp_path.iterdir())


def test_ray_actors_give_the_same_records(tiny_model_dir, tmp_path):
    items = _items()
    local = run(items, _spec(tiny_model_dir), CONFIG, tmp_path / "local" / RECORDS_FILE, chunk_size=3,
                progress=False).records()
    on_ray = run(items, _spec(tiny_model_dir), CONFIG, tmp_path / "ray" / RECORDS_FILE, actors=2, chunk_size=2,
                 progress=False).records()
    assert [json.dumps(r.to_json(), sort_keys=True) for r in on_ray] == \
           [json.dumps(r.to_json(), sort_keys=True) for r in local]
