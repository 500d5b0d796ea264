"""Every file a user hands the command line, made hostile: one line naming the file, exit 2, no traceback, no model
loaded. The same inputs for every reader (prompts, records, manifests, fluency scores, steering tokens, text)."""
import json
import random

import pytest

from steer_eval.cli import main as cli
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.judges.llm import ENV_BASE_URL, ENV_MODEL

NON_UTF8 = '{"prompt": "Grüße", "prompt_id": "0"}\n'.encode("latin-1")
HOSTILE = {
    "random bytes": lambda path: path.write_bytes(random.Random(0).randbytes(4096)),
    "empty": lambda path: path.write_bytes(b""),
    "directory": lambda path: path.mkdir(),
    "wrong shape": lambda path: path.write_text('{"a": 1}\n'),
    "huge line": lambda path: path.write_text(json.dumps({"x": "a" * 5_000_000}) + "\n"),
    "not utf-8": lambda path: path.write_bytes(NON_UTF8),
}
RECORD = {"prompt_id": "0", "prompt": "Why is the sky blue?", "behaviors": ["german"], "control_method": "text",
          "response": "Der Himmel ist blau.", "run": "0123456789ab"}


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(self):
        raise AssertionError("a model was loaded although the input was bad")
    monkeypatch.setattr(BackendSpec, "build", refuse)


def _refused(argv, named, capsys):
    assert cli.main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steer-eval: error: "), err[:2000]
    assert str(named) in lines[0] and len(lines[0]) < 1000, lines[0][:2000]
    return lines[0]


def _infer(tiny_model_dir, *extra):
    return ["infer", "--model_path", tiny_model_dir, "--steering", "german", "--control-method", "text", *extra]


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE)
def test_prompt_files(make, tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    make(prompts)
    _refused(_infer(tiny_model_dir, "--data_path", prompts), prompts, capsys)
    _refused(["grid", "--model", tiny_model_dir, "--control-method", "text", "--k", "1", "--combination", "german",
              "--data_path", prompts, "--output-dir", tmp_path / "grid"], prompts, capsys)


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE)
def test_records_files(make, tiny_model_dir, tmp_path, capsys, monkeypatch):
    records = tmp_path / "records.jsonl"
    make(records)
    _refused(["analyze", records], records, capsys)
    _refused(["score", records, "--model", tiny_model_dir], records, capsys)
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9/v1")  # nothing listens: the records fail first
    monkeypatch.setenv(ENV_MODEL, "judge")
    _refused(["judge", records], records, capsys)


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE)
def test_run_manifests(make, tiny_model_dir, tmp_path, capsys):
    manifest = tmp_path / "records.manifest.json"
    make(manifest)
    _refused(_infer(tiny_model_dir, "--output", tmp_path / "records.jsonl"), manifest, capsys)


@pytest.mark.parametrize("make", [make for name, make in HOSTILE.items() if name != "empty"],
                         ids=[name for name in HOSTILE if name != "empty"])
def test_fluency_sidecars(make, tmp_path, capsys):
    (tmp_path / "records.jsonl").write_text(json.dumps(RECORD) + "\n")
    sidecar = tmp_path / "records.fluency"
    make(sidecar)
    _refused(["analyze", tmp_path / "records.jsonl"], sidecar, capsys)


@pytest.mark.parametrize("file", ["metadata.json", "vector.safetensors"])
@pytest.mark.parametrize("make", [make for name, make in HOSTILE.items() if name != "directory"],
                         ids=[name for name in HOSTILE if name != "directory"])
def test_steering_token_files(make, file, tiny_model_dir, tiny_tokens_dir, tmp_path, capsys):
    import shutil
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_tokens_dir / "german", tokens / "german")
    (tokens / "german" / file).unlink()
    make(tokens / "german" / file)
    _refused(["infer", "--model_path", tiny_model_dir, "--steering", "german", "--tokens-dir", tokens,
              "--data_path", "bundled", "--limit", "1"], tokens / "german", capsys)
    _refused(["generate", "--model", tiny_model_dir, "--steering", "german", "--tokens-dir", tokens,
              "--prompt", "Hi"], tokens / "german", capsys)


@pytest.mark.parametrize("name", ["random bytes", "directory", "not utf-8"])
def test_text_to_verify(name, tmp_path, capsys):
    text = tmp_path / "response.txt"
    HOSTILE[name](text)
    _refused(["verify", "--behavior", "german", "--file", text], text, capsys)


@pytest.mark.parametrize("command", ["infer", "generate"])
def test_an_unknown_behaviour_is_named_as_one(command, tiny_model_dir, capsys):
    argv = (["infer", "--model_path", tiny_model_dir, "--limit", "1"] if command == "infer"
            else ["generate", "--model", tiny_model_dir, "--prompt", "Hi"])
    error = _refused([*argv, "--steering", "klingon"], "klingon", capsys)
    assert "unknown behaviour 'klingon'" in error


def test_a_folder_given_as_a_prompt_file_is_called_a_folder(tiny_model_dir, tmp_path, capsys):
    assert "is a directory" in _refused(_infer(tiny_model_dir, "--data_path", tmp_path), tmp_path, capsys)


@pytest.mark.parametrize("file", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE)
def test_model_folder_files(make, file, tiny_model_dir, tmp_path, capsys):
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / file).unlink()
    make(model / file)
    _refused(_infer(model, "--limit", "1"), model, capsys)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_an_archive_cut_short(keep, tmp_path, capsys):
    from pathlib import Path
    shipped = (Path(__file__).parents[1] / "results" / "token_eval" / "records.tar.gz").read_bytes()
    archive = tmp_path / "records.tar.gz"
    archive.write_bytes(shipped[:int(len(shipped) * keep)])
    assert "not a readable .tar.gz" in _refused(["analyze", archive], archive, capsys)


@pytest.mark.parametrize("make", [make for name, make in HOSTILE.items() if name != "empty"],
                         ids=[name for name in HOSTILE if name != "empty"])
def test_judge_caches(make, tmp_path, capsys, monkeypatch):
    (tmp_path / "records.jsonl").write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "records.judge").mkdir()
    cache = tmp_path / "records.judge" / "cache.jsonl"
    make(cache)
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9/v1")  # nothing listens: the cache fails first
    monkeypatch.setenv(ENV_MODEL, "judge")
    _refused(["judge", tmp_path / "records.jsonl"], cache, capsys)


def test_a_model_without_a_chat_template_is_one_line_before_it_loads(tiny_model_dir, tmp_path, capsys):
    import shutil
    model = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert "has no chat template" in _refused(_infer(model, "--limit", "1"), model, capsys)


def test_assembly_names_a_tokenizer_without_a_chat_template(tokenizer):
    import copy
    from steer_eval.steering.assembly import assemble
    from steer_eval.scoring.behaviors import BehaviorError
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(BehaviorError, match="has no chat template"):
        assemble("Hi", ["german"], bare)
