"""CAA on the tiny random Llama: the contrastive means against an unbatched reference, the HF backend's addition
against a hand-written hook, the export against lm-eval's stock `steered` model, the store's refusals, the vLLM
refusals (runner, lm-eval class) and the CLI export."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from steer_eval.steering.activation import Intervention
from steer_eval.steering.assembly import assemble
from steer_eval.backends.hf import HFBackend
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.training.caa import caa_token, contrastive_means, export_steered
from steer_eval.errors import UserError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.runs.grid import build_grid
from steer_eval.scoring.prompts import Prompt
from steer_eval.runs.records import Request
from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenError, TokenStore

SCRIPT = str(Path(sys.executable).parent / "steer-eval")
PROMPT = "Why is the sky blue?"
PROMPTS = ["Why is the sky blue?", "Name three rivers in Europe.", "What is 2 + 2?",
           "Write a short note to a friend about the weekend and the weather.", "Explain gravity."]
# german and words_10_50 share layer 1, so their composition is one summed addition; lowercase sits at layer 0.
VECTORS = {"german": (1, 3.0), "words_10_50": (1, -2.0), "lowercase": (0, 1.5)}


def _vector(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def caa(tiny_hf, tiny_model_dir, tmp_path_factory):
    """An HF backend (the session's tiny model) over a store holding caa/<b> for the behaviours in VECTORS."""
    store = TokenStore(tmp_path_factory.mktemp("caa-tokens"))
    backend = HFBackend(str(tiny_model_dir), tokens_dir=store.directory, model=tiny_hf.model,
                        tokenizer=tiny_hf.tokenizer, batch_size=4)
    tokens = {b: caa_token(b, _vector(i), layer, factor, backend.identity)
              for i, (b, (layer, factor)) in enumerate(VECTORS.items())}
    for token in tokens.values():
        store.save(token)
    return backend, tokens


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _added(model, additions: dict[int, torch.Tensor]):
    """Hand-written forward hooks: add additions[layer] to that decoder layer's output at every position."""
    def hook(module, args, output, delta):
        hidden = _hidden(output) + delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    return [model.model.layers[layer].register_forward_hook(lambda m, a, o, d=delta: hook(m, a, o, d))
            for layer, delta in additions.items()]


def _manual_logits(model, ids, additions: dict[int, torch.Tensor]) -> torch.Tensor:
    handles = _added(model, additions)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()


def test_contrastive_means_equal_an_unbatched_reference(tiny_hf):
    model, tokenizer = tiny_hf.model, tiny_hf.tokenizer
    layers = [0, 1]
    means = contrastive_means(model, tokenizer, PROMPTS, "german", layers, batch_size=2)  # 3 batches, padded

    def last_activation(ids, layer):
        captured = {}
        handle = model.model.layers[layer].register_forward_hook(
            lambda m, a, o: captured.__setitem__("h", _hidden(o)[0, -1].detach().clone()))
        try:
            with torch.no_grad():
                model(torch.tensor([ids]))
        finally:
            handle.remove()
        return captured["h"].double()

    lengths = set()
    for layer in layers:
        differences = []
        for prompt in PROMPTS:
            with_instruction = assemble(prompt, ["german"], tokenizer, control_method="text", paraphrase_seed=0)
            plain = assemble(prompt, [], tokenizer, control_method="text")
            assert with_instruction.instruction and not plain.instruction
            lengths |= {len(with_instruction.input_ids), len(plain.input_ids)}
            differences.append(last_activation(with_instruction.input_ids, layer)
                               - last_activation(plain.input_ids, layer))
        expected = torch.stack(differences).mean(0).float()
        assert means[layer].dtype == torch.float32 and means[layer].shape == (64,)
        assert torch.allclose(means[layer], expected, atol=1e-5), (means[layer] - expected).abs().max()
        assert expected.abs().max() > 1e-3  # the instruction changed something: the check is not vacuous
    assert len(lengths) > 2  # rows of different lengths: the batches were padded


def test_backend_adds_the_vector_at_every_position_and_compositions_add_the_sum(caa):
    backend, tokens = caa
    model = backend.model
    prompt = backend.assemble(PROMPT, ["german"], control_method="caa")
    assert prompt.activations == ("caa/german",) and not prompt.slots and prompt.instruction is None
    assert prompt.input_ids == assemble(PROMPT, [], backend.tokenizer, control_method="text").input_ids

    german, words = tokens["german"], tokens["words_10_50"]
    ours = backend.next_token_logits(prompt)
    expected = _manual_logits(model, prompt.input_ids, {1: 3.0 * german.vector})
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, _manual_logits(model, prompt.input_ids, {}), atol=1e-3)

    forward = backend.next_token_logits(backend.assemble(PROMPT, ["german", "words_10_50"], control_method="caa"))
    backward = backend.next_token_logits(backend.assemble(PROMPT, ["words_10_50", "german"], control_method="caa"))
    assert torch.equal(forward, backward)
    summed = _manual_logits(model, prompt.input_ids, {1: 3.0 * german.vector - 2.0 * words.vector})
    assert torch.allclose(forward, summed, atol=1e-5)


def test_every_position_includes_generated_tokens(caa):
    """Greedy generation equals a hand-written loop with the vector added at every step (prompt and generated)."""
    backend, tokens = caa
    model = backend.model
    prompt = backend.assemble(PROMPT, ["german"], control_method="caa")
    text = backend.generate([prompt], GenerationConfig(max_new_tokens=8), progress=False)[0]
    handles = _added(model, {1: 3.0 * tokens["german"].vector})
    try:
        with torch.no_grad():
            ids = model.generate(torch.tensor([prompt.input_ids]), max_new_tokens=8, do_sample=False,
                                 pad_token_id=backend.tokenizer.pad_token_id)
    finally:
        for handle in handles:
            handle.remove()
    assert text == backend.tokenizer.decode(ids[0, len(prompt.input_ids):], skip_special_tokens=True)


def test_export_matches_lm_evals_stock_steered_model(caa, tiny_model_dir, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    backend, tokens = caa
    path = export_steered([tokens["german"], tokens["words_10_50"], tokens["lowercase"]], tmp_path / "steer.pt")
    content = torch.load(path, weights_only=True)
    assert sorted(content) == ["layers.0", "layers.1"]
    assert torch.allclose(content["layers.1"]["steering_vector"],
                          3.0 * tokens["german"].vector - 2.0 * tokens["words_10_50"].vector)
    assert content["layers.0"]["action"] == "add" and content["layers.0"]["steering_coefficient"] == 1.0

    lm = SteeredModel(pretrained=str(tiny_model_dir), steer_path=str(path), device="cpu", dtype="float32",
                      batch_size=1)
    prompt = backend.assemble(PROMPT, ["german", "words_10_50", "lowercase"], control_method="caa")
    ids = torch.tensor([prompt.input_ids])
    stock = lm._model_call(ids)[0, -1].float()
    assert torch.allclose(stock, backend.next_token_logits(prompt), atol=1e-5)
    assert not torch.allclose(stock, _manual_logits(backend.model, prompt.input_ids, {}), atol=1e-3)

    new_tokens = 8
    generated = lm._model_generate(ids, max_length=ids.shape[1] + new_tokens, stop=[lm.tokenizer.eos_token],
                                   do_sample=False)
    stock_text = lm.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    ours = backend.generate([prompt], GenerationConfig(max_new_tokens=new_tokens), progress=False)[0]
    assert stock_text == ours


def test_export_refuses_what_lm_eval_cannot_reproduce(caa, tmp_path):
    backend, tokens = caa
    prosv = SteeringToken("prosv/german", _vector(9), ("german",), backend.identity, {},
                          Intervention("prosv", 1, 3, 2.0))
    plain = SteeringToken("german", _vector(9), ("german",), backend.identity)
    with pytest.raises(UserError, match="last 3 prompt positions"):
        export_steered([tokens["german"], prosv], tmp_path / "a.pt")
    with pytest.raises(UserError, match="is a steering token"):
        export_steered([plain], tmp_path / "b.pt")
    with pytest.raises(UserError, match=r"\.pt or \.pth"):
        export_steered([tokens["german"]], tmp_path / "steer.txt")
    assert not list(tmp_path.iterdir())


def test_store_refuses_another_models_vector_and_a_kind_mismatch(caa, tmp_path):
    backend, _ = caa
    store = TokenStore(tmp_path)
    other = ModelIdentity("other-model", 64, "0123456789abcdef")
    store.save(caa_token("german", _vector(1), 1, 2.0, other))
    assert store.load("caa/german").model.fingerprint == "0123456789abcdef"
    with pytest.raises(TokenError, match="was trained for other-model"):
        store.load("caa/german", backend.identity)

    store.save(SteeringToken("caa/spanish", _vector(2), ("spanish",), backend.identity, {},
                             Intervention("prosv", 1, 3, 2.0)))
    with pytest.raises(TokenError, match="holds a prosv activation vector"):
        store.load("caa/spanish", backend.identity)
    store.save(SteeringToken("caa/french", _vector(3), ("french",), backend.identity))
    with pytest.raises(TokenError, match="holds an input-embedding steering token"):
        store.load("caa/french", backend.identity)
    (tmp_path / "italian").mkdir()
    for name in ("vector.safetensors", "metadata.json"):  # a caa vector where a steering token belongs
        (tmp_path / "italian" / name).write_bytes((tmp_path / "caa" / "german" / name).read_bytes())
    with pytest.raises(TokenError, match="holds a caa activation vector"):
        store.load("italian")


def test_runner_refuses_caa_on_vllm_before_loading_a_model(tmp_path):
    from steer_eval.runs.runner import run

    requests = [Request("p1", PROMPT, ("german",), "caa")]
    spec = BackendSpec("vllm", str(tmp_path / "no-such-model"), str(tmp_path))
    with pytest.raises(UserError, match="control method caa .* only the HF backend"):
        run(requests, spec, GenerationConfig(max_new_tokens=4))


def test_grid_runs_one_mode_per_order_for_caa():
    prompts = [Prompt("p1", PROMPT), Prompt("p2", "Explain gravity.")]
    plan = build_grid(prompts, [2], ["caa"], ["composition", "concatenation"], only=[["german", "words_10_50"]])
    settings = list(plan.settings())
    assert [(s.behaviors, s.mode) for s in settings] == [(("german", "words_10_50"), "composition"),
                                                        (("words_10_50", "german"), "composition")]
    assert len(plan) == 4 and {r.control_method for r in plan} == {"caa"}


# --- lm-eval model classes ---------------------------------------------------------------------------------------

def _request(context, doc=None, gen_kwargs=None):
    return Instance(request_type="generate_until", doc=doc or {}, arguments=(context, gen_kwargs or {}), idx=0)


def test_steering_hf_runs_caa(caa):
    from steer_eval.lmeval.models import SteeringHFLM
    from steer_eval.lmeval.tasks import compose_documents

    backend, tokens = caa
    lm = SteeringHFLM(backend=backend, control_method="caa", steering="german")
    [response] = lm.generate_until([_request(PROMPT, gen_kwargs={"until": [], "max_gen_toks": 6})])
    expected = backend.assemble(PROMPT, ["german"], control_method="caa")
    assert response == backend.generate([expected], GenerationConfig(max_new_tokens=6), progress=False)[0]
    assert response.setting["control_method"] == "caa" and response.setting["steering"] == ["caa/german"]
    assert response.setting["steering_tokens"] == {"caa/german": tokens["german"].fingerprint}

    doc = compose_documents(2, "seen")[1]
    lm = SteeringHFLM(backend=backend, control_method="caa")
    assembled = lm.assembled(_request(doc["text_input"], doc))
    assert assembled.activations == tuple(f"caa/{b}" for b in doc["behaviors"]) and assembled.instruction is None


def test_steering_hf_fails_before_generating_when_a_caa_vector_is_missing(caa):
    from steer_eval.lmeval.models import SteeringHFLM

    backend, _ = caa
    lm = SteeringHFLM(backend=backend, control_method="caa", steering="spanish")
    with pytest.raises(TokenError, match="caa/spanish"):
        lm.generate_until([_request(PROMPT, gen_kwargs={"max_gen_toks": 2})])


@pytest.mark.parametrize("method", ["caa", "prosv"])
def test_steering_vllm_refuses_activation_steering_at_construction(method, tiny_model_dir):
    from steer_eval.lmeval.models import ModelArgsError, SteeringVLLMLM

    with pytest.raises(ModelArgsError, match=f"control method {method} .* only the HF backend .* steering_hf"):
        SteeringVLLMLM(pretrained=str(tiny_model_dir), control_method=method)


# --- CLI -----------------------------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_cli_export_steered(caa, tiny_model_dir, tmp_path):
    backend, tokens = caa
    out = tmp_path / "out" / "steer.pt"
    base = ("tokens", "export-steered", "--tokens-dir", str(backend.store.directory))
    result = cli(*base, "--model", str(tiny_model_dir), "--behaviors", "german", "words_10_50", "--out", str(out))
    assert result.returncode == 0, result.stderr
    content = torch.load(out, weights_only=True)
    assert list(content) == ["layers.1"]
    assert torch.allclose(content["layers.1"]["steering_vector"],
                          3.0 * tokens["german"].vector - 2.0 * tokens["words_10_50"].vector)
    assert str(out.resolve()) in result.stdout
    assert (f"lm_eval --model steered --model_args pretrained={tiny_model_dir.resolve()},steer_path={out.resolve()}"
            in result.stdout and "--apply_chat_template" in result.stdout and "prompt_only" in result.stdout)
    # No --model: the vectors' own metadata vouches for them (they must agree on one model).
    assert cli(*base, "--behaviors", "lowercase", "--out", str(tmp_path / "l.pt")).returncode == 0


def test_cli_export_steered_errors_are_one_line(caa, tiny_model_dir, tmp_path, write_random_tokens):
    backend, tokens = caa
    store = TokenStore(tmp_path / "tokens")
    store.save(tokens["german"])
    store.save(  # a prosv vector where the export looks for caa/spanish
        SteeringToken("caa/spanish", _vector(6), ("spanish",), backend.identity, {},
                      Intervention("prosv", 1, 3, 2.0)))
    other = TokenStore(tmp_path / "other")
    other.save(caa_token("german", _vector(1), 1, 2.0, ModelIdentity("other-model", 64, "0123456789abcdef")))
    mixed = TokenStore(tmp_path / "mixed")
    mixed.save(tokens["german"])
    mixed.save(caa_token("lowercase", _vector(1), 0, 2.0, ModelIdentity("other-model", 64, "0123456789abcdef")))
    cases = [
        (store, ("--behaviors", "words_10_50"), "out.pt", "no CAA vector caa/words_10_50"),
        (store, ("--behaviors", "spanish"), "out.pt", "holds a prosv activation vector"),
        (store, ("--behaviors", "german"), "out.txt", ".pt or .pth"),
        (store, ("--behaviors", "german", "klingon"), "out.pt", "klingon"),
        (other, ("--behaviors", "german", "--model", str(tiny_model_dir)), "out.pt", "was trained for other-model"),
        (mixed, ("--behaviors", "german", "lowercase"), "out.pt", "made for different models"),
    ]
    for where, args, name, message in cases:
        result = cli("tokens", "export-steered", "--tokens-dir", str(where.directory), *args,
                     "--out", str(tmp_path / name))
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.txt").exists()


def test_one_refusal_for_activation_methods_without_hooks():
    from steer_eval.steering.activation import unsupported_backend
    assert unsupported_backend(["caa", "steering"], "hf", "fix") is None
    assert unsupported_backend(["prosv"], "simulate", "fix") is None
    assert unsupported_backend(["steering", "text"], "vllm", "fix") is None
    message = unsupported_backend({"prosv", "caa", "text"}, "vllm", "use the HF backend")
    assert message.startswith("control method caa, prosv adds vectors") and message.endswith("use the HF backend")
