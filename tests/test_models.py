import json

import pytest

from steer_eval import models
from steer_eval.models import ModelError, fetch, model_label, resolve_model_path


def test_fetch_returns_a_verified_hf_folder(default_model_dir):
    assert fetch("smollm2-135m") == default_model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", models.MANIFEST):
        assert (default_model_dir / name).is_file()
    manifest = json.loads((default_model_dir / models.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == models.EMBEDDED_MODELS["smollm2-135m"].gguf_sha256


def test_verification_notices_a_changed_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abc")
    (tmp_path / models.MANIFEST).write_text(json.dumps({"sha256": {"weights.bin": models._sha256(tmp_path / "weights.bin")}}))
    assert models._verify_folder(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"abd")
    assert not models._verify_folder(tmp_path)


def test_model_specs(tmp_path, default_model_dir):
    assert resolve_model_path("smollm2-135m") == str(default_model_dir)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert model_label("smollm2-135m") == "SmolLM2-135M-Instruct"
    assert model_label("/x/y/Llama-3.2-3B-Instruct/") == "Llama-3.2-3B-Instruct"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="unknown embedded model 'gpt-9'.*smollm2-135m"):
        fetch("gpt-9")
