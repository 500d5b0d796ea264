"""Run identity covers the whole model, sidecars belong to their run, and resume validates rows like the reader."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from steer_eval.cli import main as cli
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.errors import RecordFileError, RunMismatchError
from steer_eval.judges.fluency import plan_scores
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import weights_fingerprint
from steer_eval.runs.records import Request
from steer_eval.runs.identity import manifest_path
from steer_eval.runs.runner import RECORDS_FILE, run
from steer_eval.steering.tokens import embedding_fingerprint

CONFIG = GenerationConfig(max_new_tokens=4)
REQUESTS = [Request(str(i), prompt, ("german",), "text")
            for i, prompt in enumerate(["Why is the sky blue?", "How do bees fly?", "What is rain?"])]


def _spec(model):
    return BackendSpec("hf", str(model), options={"batch_size": 4})


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self):
        raise AssertionError("a model was loaded before the run was refused")
    monkeypatch.setattr(BackendSpec, "build", refuse)


@pytest.fixture
def twin(tiny_model_dir, tmp_path):
    """The tiny model copied under the same folder name with one MLP weight zeroed: same embeddings, other answers."""
    twin = tmp_path / "copy" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, twin)
    weights = load_file(twin / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = torch.zeros_like(weights[name])
    save_file(weights, twin / "model.safetensors", metadata={"format": "pt"})
    return twin


@pytest.fixture
def grid_folder(tiny_model_dir, tmp_path):
    output = tmp_path / "grid" / RECORDS_FILE
    run(REQUESTS, _spec(tiny_model_dir), CONFIG, output, progress=False)
    return output


def test_a_model_that_differs_past_the_embeddings_is_another_run(tiny_model_dir, twin, grid_folder, no_model_loads):
    embeddings = [load_file(folder / "model.safetensors")["model.embed_tokens.weight"] for folder in (tiny_model_dir, twin)]
    assert embedding_fingerprint(embeddings[0]) == embedding_fingerprint(embeddings[1])  # all the old identity saw
    before = grid_folder.read_bytes()
    with pytest.raises(RunMismatchError, match=r"model files: fingerprint \w+ in the folder, \w+ now"):
        run(REQUESTS, _spec(twin), CONFIG, grid_folder, progress=False)
    assert grid_folder.read_bytes() == before


def test_the_run_id_names_the_model_files(tiny_model_dir, twin, tmp_path):
    ids = []
    for model in (tiny_model_dir, twin):
        output = tmp_path / model.parent.name / RECORDS_FILE
        run(REQUESTS[:1], _spec(model), CONFIG, output, progress=False)
        ids.append(json.loads(manifest_path(output).read_text())["run"])
    assert ids[0] != ids[1]


def test_the_fingerprint_is_computed_once_per_folder(twin, tmp_path, monkeypatch):
    import hashlib
    monkeypatch.setenv("STEER_EVAL_HOME", str(tmp_path / "home"))
    first = weights_fingerprint(str(twin))
    real, reads = hashlib.file_digest, []
    monkeypatch.setattr(hashlib, "file_digest", lambda handle, name: reads.append(handle.name) or real(handle, name))
    assert weights_fingerprint(str(twin)) == first and reads == []  # unchanged folder: no file read
    config = json.loads((twin / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    assert weights_fingerprint(str(twin)) != first  # not only weights: the config changes the answers too
    assert reads


def test_a_manifest_of_the_embedding_only_identity_is_refused_with_the_fix(tiny_model_dir, grid_folder, no_model_loads):
    manifest = json.loads(manifest_path(grid_folder).read_text())
    manifest["manifest_version"] = 1
    manifest_path(grid_folder).write_text(json.dumps(manifest))
    with pytest.raises(RunMismatchError, match="older steer-eval.*input embeddings only.*--restart"):
        run(REQUESTS, _spec(tiny_model_dir), CONFIG, grid_folder, progress=False)


def _fluency_rows(records_path, run_id):
    return "".join(json.dumps({"key": Request.from_json(json.loads(line)).key, "run": run_id, "fluency": -1.0,
                               "tokens": 3, "scorer": "x"}) + "\n"
                   for line in records_path.read_text().splitlines())


def test_restart_moves_every_sidecar_of_the_run(tiny_model_dir, grid_folder):
    folder = grid_folder.parent
    run_id = json.loads(manifest_path(grid_folder).read_text())["run"]
    (folder / "records.fluency").write_text(_fluency_rows(grid_folder, run_id))
    for judge in (folder / "judge", folder / "records.judge"):
        judge.mkdir()
        (judge / "scores.jsonl").write_text("{}\n")
    run(REQUESTS, _spec(tiny_model_dir), CONFIG, grid_folder, progress=False, restart=True)
    moved = sorted(path.name.split(".replaced-")[0] for path in folder.iterdir() if ".replaced-" in path.name)
    assert moved == ["judge", "records.fluency", "records.jsonl", "records.judge", "records.manifest.json"]
    assert not (folder / "records.fluency").exists() and not (folder / "judge").exists()
    assert plan_scores(folder).todo  # the fresh records are scored anew, not taken as scored


def test_analyze_and_score_refuse_fluency_scores_of_another_run(grid_folder, capsys, no_model_loads):
    folder = grid_folder.parent
    (folder / "records.fluency").write_text(_fluency_rows(grid_folder, "0123456789ab"))
    assert cli.main(["analyze", str(folder)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "records.fluency holds scores of run '0123456789ab'" in error and "score the records again" in error
    assert cli.main(["score", str(folder)]) == 2  # refused before any model loads (no_model_loads)
    assert "holds scores of run" in capsys.readouterr().err


def test_analyze_shows_fluency_of_the_same_run(grid_folder, capsys):
    run_id = json.loads(manifest_path(grid_folder).read_text())["run"]
    (grid_folder.parent / "records.fluency").write_text(_fluency_rows(grid_folder, run_id))
    assert cli.main(["analyze", "--json", str(grid_folder.parent)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["quality"]["fluency"] == -1.0


NOT_RECORDS = {
    "empty object": "{}",
    "no prompt": '{"prompt_id": "0", "behaviors": ["german"], "response": "x"}',
    "prompt not text": '{"prompt_id": "0", "prompt": 5, "behaviors": ["german"], "response": "x"}',
    "behaviours a string": '{"prompt_id": "0", "prompt": "p", "behaviors": "german", "response": "x"}',
    "no response": '{"prompt_id": "0", "prompt": "p", "behaviors": ["german"]}',
    "a list": "[1, 2]",
    "a string": '"text"',
}


@pytest.mark.parametrize("row", NOT_RECORDS.values(), ids=NOT_RECORDS)
def test_a_row_that_is_no_record_is_named_on_resume_as_by_the_reader(tiny_model_dir, grid_folder, row,
                                                                     no_model_loads, capsys):
    lines = grid_folder.read_text().splitlines()
    grid_folder.write_text("\n".join([lines[0], row, *lines[1:]]) + "\n")
    with pytest.raises(RecordFileError, match=f"{grid_folder}.*(record|line) 2 is not a"):
        run(REQUESTS, _spec(tiny_model_dir), CONFIG, grid_folder, progress=False)
    assert cli.main(["analyze", str(grid_folder)]) == 2
    assert "2 is not a" in capsys.readouterr().err
