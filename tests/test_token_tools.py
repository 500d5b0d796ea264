"""steer_eval.report.tokens and `steer-eval tokens`: exact geometry on known vectors, the tiny model's tokens, the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from steer_eval.report import tokens as token_tools
from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS
from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenError, TokenStore

SCRIPT = str(Path(sys.executable).parent / "steer-eval")
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def cli(*args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)


def embedding_of(model_dir) -> torch.Tensor:
    return load_file(Path(model_dir) / "model.safetensors")["model.embed_tokens.weight"]


def test_cosine_of_a_vector_with_itself_is_one_and_known_angles_are_exact():
    vectors = np.array([[3.0, 0, 0], [0, 2.0, 0], [-1.5, 0, 0], [1.0, 1.0, 0]])
    matrix = token_tools.cosine_matrix(vectors)
    assert np.allclose(np.diag(matrix), 1.0, atol=1e-12)
    assert np.allclose(matrix, matrix.T)
    assert matrix[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert matrix[0, 2] == pytest.approx(-1.0, abs=1e-12)
    assert matrix[0, 3] == pytest.approx(1 / np.sqrt(2), abs=1e-12)


def test_pca_of_known_vectors():
    offset = np.array([1.0, -2.0, 0.5, 4.0, 0.0])
    e1, e2 = np.eye(5)[0], np.eye(5)[1]
    vectors = offset + np.stack([3 * e1, -3 * e1, e2, -e2])
    pca = token_tools.pca_2d(vectors)
    assert np.allclose(pca.mean, offset)
    assert np.allclose(pca.components, [e1, e2], atol=1e-12)  # signs fixed: largest loading positive
    assert np.allclose(pca.explained, [18 / 20, 2 / 20])
    assert np.allclose(pca.project(vectors), [[3, 0], [-3, 0], [0, 1], [0, -1]], atol=1e-12)


def test_nearest_of_a_vocabulary_row_is_that_row():
    embedding = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    vectors = np.stack([2.5 * embedding[17], embedding[120]])
    ids, cosines = token_tools.nearest_ids(vectors, embedding, 5)
    assert ids[:, 0].tolist() == [17, 120]
    assert cosines[:, 0] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert np.all(np.diff(cosines, axis=1) <= 0)  # best first
    assert ids.shape == (2, 5) and len(set(ids[0])) == 5


def test_and_orthogonality_splits_by_what_and_was_trained_with():
    names = ["german", "spanish", "json", AND_TOKEN]
    vectors = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0, 0.8], [0, 0, 1.0]])
    metadata = [{}, {}, {}, {"behaviors": ["german", "spanish"]}]
    line = token_tools.and_orthogonality(names, token_tools.cosine_matrix(vectors), metadata)
    assert line == ("<and> vs behaviours <and> was trained with (2): mean |cos| 0.000, max 0.000 (spanish); "
                    "vs the other behaviour tokens (1): mean |cos| 0.800, max 0.800 (json)")


def test_training_summary_reads_the_trainers_metadata():
    metadata = {"behaviors": ["german"], "training_config": {
        "stage": "behaviour", "lr": 0.005, "epochs": 5,
        "summary": {"steps": 715, "examples": 4566, "final_loss": 0.062, "val_loss": 0.063}}}
    assert token_tools.training_summary(metadata) == {
        "stage": "behaviour", "trained_on": ["german"], "steps": 715, "examples": 4566, "lr": 0.005, "epochs": 5,
        "final_loss": 0.062, "val_loss": 0.063, "date": None}
    assert token_tools.training_summary({"training_config": {"summary": {"date": "2026-12-01"}}})["date"] == \
        "2026-12-01"


def test_tiny_model_tokens_list_nearest_and_plots(tiny_model_dir, tiny_tokens_dir, tmp_path):
    tokens = token_tools.load_token_set(str(tiny_model_dir), tiny_tokens_dir)
    assert tokens.names == [*BEHAVIORS, AND_TOKEN]
    assert tokens.vectors.shape == (len(BEHAVIORS) + 1, 64)
    rows = token_tools.token_rows(tokens)
    assert rows[0]["norm"] == pytest.approx(float(np.linalg.norm(tokens.vectors[0])), abs=1e-4)
    assert rows[-1]["category"] == "<and>" and rows[0]["category"] == "language"
    assert token_tools.list_markdown(tokens).count("\n| ") == len(tokens.names) + 1  # header + one row each

    figure = token_tools.pca_figure(tokens, vocabulary_points=500)
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["vocabulary embeddings (500 of 49,152)", "language", "length", "format", "structure",
                      "extra", AND_TOKEN]
    assert figure.axes[0].get_xlabel().startswith("PC1 (")
    cosine = token_tools.cosine_figure(tokens.names, token_tools.cosine_matrix(tokens.vectors), "t")
    assert [a.get_ylabel() for a in cosine.axes] == ["", "cosine similarity"]  # the heatmap and its colour bar
    assert token_tools.write_pca(tokens, tmp_path / "pca.png").read_bytes()[:8] == PNG_HEADER


def test_nearest_token_of_a_token_equal_to_a_vocabulary_row(tiny_model_dir, tokenizer, tmp_path):
    embedding = embedding_of(tiny_model_dir)
    row = tokenizer.convert_tokens_to_ids("ĠGerman")
    identity = ModelIdentity.of("tiny", embedding)
    TokenStore(tmp_path).save(SteeringToken("german", embedding[row].clone() * 3, ("german",), identity))
    nearest = token_tools.nearest_tokens(token_tools.load_token_set(str(tiny_model_dir), tmp_path), 3)
    assert nearest["german"][0][:2] == (row, " German")
    assert nearest["german"][0][2] == pytest.approx(1.0, abs=1e-5)


def test_tokens_of_another_model_are_refused(tiny_model_dir, write_random_tokens, tmp_path):
    write_random_tokens(tmp_path, "other", torch.randn(100, 64))
    with pytest.raises(TokenError, match="was trained for other"):
        token_tools.load_token_set(str(tiny_model_dir), tmp_path)


def test_cli_tokens_commands(tiny_model_dir, tiny_tokens_dir, tmp_path):
    base = ("--model", str(tiny_model_dir), "--tokens-dir", str(tiny_tokens_dir))
    listed = cli("tokens", "list", *base, "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [t["name"] for t in data["tokens"]] == [*BEHAVIORS, AND_TOKEN] and data["hidden_size"] == 64

    nearest = cli("tokens", "nearest", *base, "--k", "4")
    assert nearest.returncode == 0 and nearest.stdout.count("\n| ") == len(BEHAVIORS) + 1  # one row per token

    pca = cli("tokens", "pca", *base, "--out", str(tmp_path / "p" / "pca.png"))
    cosine = cli("tokens", "cosine", *base, "--out", str(tmp_path / "cosine.png"))
    assert pca.returncode == 0 and cosine.returncode == 0, pca.stderr + cosine.stderr
    assert (tmp_path / "p" / "pca.png").read_bytes()[:8] == PNG_HEADER
    assert (tmp_path / "cosine.png").read_bytes()[:8] == PNG_HEADER
    assert "| <and> | " in cosine.stdout and "<and> vs " in cosine.stdout


@pytest.mark.parametrize("args, message", [
    (("--tokens-dir", "EMPTY"), "no steering tokens in"),
    (("--model", "/no/such/model"), "model folder '/no/such/model' does not exist"),
])
def test_cli_tokens_errors_are_one_line(args, message, tiny_model_dir, tmp_path):
    args = tuple(str(tmp_path) if a == "EMPTY" else a for a in args)
    if "--model" not in args:
        args = ("--model", str(tiny_model_dir), *args)
    result = cli("tokens", "list", *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
