"""PrOSV on the tiny random Llama: the vector reaches only the intended prompt positions, generation is unsteered
after the prompt, the factor and direction get gradient, and the trainer's vectors load and steer."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steer_eval.steering.activation import Intervention, added_to_layers
from steer_eval.backends.generation import GenerationConfig
from steer_eval.training.examples import student_deltas

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Why is the sky blue?"
LAYER, POSITIONS = 0, 3


def _prosv(argv, refused=False) -> subprocess.CompletedProcess:
    """trainers/train_prosv.py run as a user runs it; `refused`: it must exit 2 with one line on stderr: no traceback,
    and no model loaded (the script says so on stderr before it loads one)."""
    result = subprocess.run([sys.executable, str(REPO / "trainers" / "train_prosv.py"), *argv], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if refused:
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _layer_outputs(model, ids, additions=(), prompt_ends=None):
    captured = {}
    with added_to_layers(model, additions, prompt_ends):
        # Registered after the steering hook, so it sees the layer's output as the next layer will.
        handles = [layer.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o.detach().clone()))
                   for i, layer in enumerate(model.model.layers)]
        try:
            logits = model(ids).logits
        finally:
            for handle in handles:
                handle.remove()
    return captured, logits


def test_prosv_changes_the_layer_output_only_at_the_last_prompt_positions(tiny_hf):
    model = tiny_hf.model
    prompt = tiny_hf.assemble(PROMPT, ["german"], control_method="prosv")
    response = tiny_hf.tokenizer.encode(" Weil das Licht gestreut wird.", add_special_tokens=False)
    ids = torch.tensor([list(prompt.input_ids) + response])
    end = len(prompt.input_ids)
    delta = torch.randn(1, model.config.hidden_size)
    plain, plain_logits = _layer_outputs(model, ids)
    steered, steered_logits = _layer_outputs(model, ids, [(Intervention("prosv", LAYER, POSITIONS, 1.0), delta)],
                                             torch.tensor([end]))
    difference = steered[LAYER] - plain[LAYER]
    window = torch.zeros(ids.shape[1], dtype=torch.bool)
    window[end - POSITIONS:end] = True
    assert torch.allclose(difference[0, window], delta.expand(POSITIONS, -1), atol=1e-5)
    assert torch.equal(difference[0, ~window], torch.zeros_like(difference[0, ~window]))
    # Causal attention: nothing before the window can see it; the response after it does.
    assert torch.equal(steered_logits[0, :end - POSITIONS], plain_logits[0, :end - POSITIONS])
    assert not torch.allclose(steered_logits[0, end:], plain_logits[0, end:])


def test_prosv_generation_steers_the_prompt_and_not_the_generated_tokens(tiny_hf, tmp_path):
    """The backend's greedy output equals a hand-written loop: steered prefill, then unsteered decoding."""
    from steer_eval.steering.tokens import SteeringToken
    model, tokenizer = tiny_hf.model, tiny_hf.tokenizer
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    token = SteeringToken("prosv/german", direction, ("german",), tiny_hf.identity, {},
                          Intervention("prosv", LAYER, POSITIONS, 40.0))
    tiny_hf.use_activation_vectors([token])
    prompt = tiny_hf.assemble(PROMPT, ["german"], control_method="prosv")
    text = tiny_hf.generate([prompt], GenerationConfig(max_new_tokens=12), progress=False)[0]

    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        with added_to_layers(model, [(token.intervention, 40.0 * direction.unsqueeze(0))]):
            out = model(ids, use_cache=True)
        cache, generated = out.past_key_values, [int(out.logits[0, -1].argmax())]
        for _ in range(11):
            out = model(torch.tensor([[generated[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            generated.append(int(out.logits[0, -1].argmax()))
    if tokenizer.eos_token_id in generated:
        generated = generated[:generated.index(tokenizer.eos_token_id)]
    assert text == tokenizer.decode(generated, skip_special_tokens=True)
    plain = tiny_hf.generate([tiny_hf.assemble(PROMPT, [], control_method="text")],
                             GenerationConfig(max_new_tokens=12), progress=False)[0]
    assert text != plain  # the vector is strong enough to change the answer, so the identity above is not vacuous


def test_factor_and_direction_receive_gradient(tiny_hf):
    model = tiny_hf.model
    directions = {"german": torch.nn.Parameter(torch.randn(model.config.hidden_size))}
    factors = {"german": torch.nn.Parameter(torch.tensor(8.0))}
    prompt = tiny_hf.assemble(PROMPT, ["german"], control_method="prosv")
    ids = torch.tensor([prompt.input_ids])
    deltas = student_deltas(directions, factors, ["german"])
    with added_to_layers(model, [(Intervention("prosv", LAYER, POSITIONS, 1.0), deltas)],
                         torch.tensor([len(prompt.input_ids)])):
        loss = model(ids).logits[0, -1].log_softmax(-1)[0]
    loss.backward()
    assert factors["german"].grad is not None and factors["german"].grad.abs() > 0
    assert directions["german"].grad is not None and directions["german"].grad.abs().sum() > 0


def test_trainer_saves_vectors_the_backend_uses(tiny_model_dir, tmp_path):
    from steer_eval.backends.hf import HFBackend
    from steer_eval.steering.tokens import TokenError, TokenStore
    data = tmp_path / "german_train.json"
    data.write_text(json.dumps([{"prompt": f"Tell me about rivers {i}", "response": "Flüsse sind lang.",
                                 "behaviors": ["german"]} for i in range(6)]))
    tokens = tmp_path / "tokens"
    _prosv(["--model", str(tiny_model_dir), "--data", str(data), "--layer", "1", "--tokens_dir", str(tokens),
            "--out_dir", str(tmp_path / "run"), "--epochs", "2", "--batch_size", "4", "--temperature", "1",
            "--log_every", "1"])
    saved = TokenStore(tokens).load("prosv/german")
    assert saved.intervention == Intervention("prosv", 1, 4, saved.intervention.factor)
    assert saved.intervention.factor != 8.0  # the factor was trained, not only the direction
    assert torch.linalg.vector_norm(saved.vector).item() == pytest.approx(1.0, abs=1e-5)
    assert saved.training_config["layer"] == 1 and saved.training_config["summary"]["steps"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all("factors" in entry for entry in log)

    backend = HFBackend(str(tiny_model_dir), tokens_dir=tokens, batch_size=2)
    steered = backend.next_token_logits(backend.assemble(PROMPT, ["german"], control_method="prosv"))
    plain = backend.next_token_logits(backend.assemble(PROMPT, [], control_method="text"))
    assert not torch.allclose(steered, plain)
    shutil.copytree(tokens / "prosv" / "german", tokens / "caa" / "german")  # a prosv vector where caa belongs
    with pytest.raises(TokenError, match="holds a prosv activation vector"):
        TokenStore(tokens).load("caa/german")


def test_trainer_refuses_an_empty_selection(tiny_model_dir, tmp_path):
    data = tmp_path / "german_train.json"
    data.write_text(json.dumps([{"prompt": "x", "response": "y", "behaviors": ["german"]}]))
    refused = _prosv(["--model", str(tiny_model_dir), "--data", str(data), "--behaviors", "spanish", "--out_dir",
                      str(tmp_path / "run")], refused=True)
    assert "no training records" in refused.stderr


def _prosv_args(tiny_model_dir, tmp_path, data, *extra):
    return ["--model", str(tiny_model_dir), "--data", str(data), "--layer", "1", "--tokens_dir",
            str(tmp_path / "tokens"), "--out_dir", str(tmp_path / "run"), "--epochs", "1", "--batch_size", "4",
            "--device", "cpu", *extra]


def test_a_rerun_into_a_finished_out_dir_is_refused_and_restart_moves_it_aside(tiny_model_dir, tmp_path):
    data = tmp_path / "german_train.json"
    data.write_text(json.dumps([{"prompt": f"Tell me about rivers {i}", "response": "Flüsse sind lang.",
                                 "behaviors": ["german"]} for i in range(6)]))
    _prosv(_prosv_args(tiny_model_dir, tmp_path, data))
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    for extra in ([], ["--lr", "1e-2"]):  # the same settings (finished), and others
        error = _prosv(_prosv_args(tiny_model_dir, tmp_path, data, *extra), refused=True).stderr
        assert "--restart" in error and ("finished run" if not extra else "lr: 0.005 in the folder, 0.01 now") in error
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before  # nothing overwritten
    _prosv(_prosv_args(tiny_model_dir, tmp_path, data, "--lr", "1e-2", "--restart"))
    [aside] = (tmp_path / "run").glob("replaced-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == {p.name: b for p, b in before.items()
                                                                 if p.parent == tmp_path / "run"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"]["tokens"] == ["prosv/german"]


@pytest.mark.parametrize("content, message", [(b"\xff\xfe", "not UTF-8"), (b"[1, 2]", "not a record"),
                                              (None, "is a directory"), (b'[{"prompt": "p", "response": "r", '
                                                                         b'"behaviors": ["x"]}]', "unknown behaviour")])
def test_bad_data_is_one_line_before_the_model_loads(tiny_model_dir, tmp_path, content, message):
    path = tmp_path / "data.json"
    path.mkdir() if content is None else path.write_bytes(content)
    error = _prosv(_prosv_args(tiny_model_dir, tmp_path, path), refused=True).stderr
    assert str(path) in error and message in error
