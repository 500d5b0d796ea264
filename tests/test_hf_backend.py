"""HF backend mechanics on a tiny random Llama, checked against plain token-id computation."""
import torch

from steer_eval.backends.generation import GenerationConfig

PROMPTS = ["Why do cats purr?", "Describe a thunderstorm over the sea at night.", "Hi"]


def _token_row(backend, text=" German"):
    token_id = backend.tokenizer.encode(text, add_special_tokens=False)[0]
    return token_id, backend.embedding_weight[token_id].clone()


def _with_token_in_text(assembled, token_id):
    ids = list(assembled.input_ids)
    for position, _ in assembled.slots:
        ids[position] = token_id
    return torch.tensor([ids])


def test_vector_equal_to_a_token_embedding_reproduces_that_token(tiny_hf):
    token_id, row = _token_row(tiny_hf)
    tiny_hf.add_vectors({"german": row})
    assembled = tiny_hf.assemble(PROMPTS[0], ["german"])
    text_ids = _with_token_in_text(assembled, token_id)

    steered = tiny_hf.next_token_logits(assembled)
    plain = tiny_hf.model(input_ids=text_ids).logits[0, -1].float()
    assert torch.equal(steered, plain)

    config = GenerationConfig(max_new_tokens=12)
    plain_ids = tiny_hf.model.generate(text_ids, attention_mask=torch.ones_like(text_ids), max_new_tokens=12,
                                       do_sample=False, pad_token_id=tiny_hf.tokenizer.pad_token_id)
    plain_text = tiny_hf.tokenizer.decode(plain_ids[0, text_ids.shape[1]:], skip_special_tokens=True)
    assert tiny_hf.generate([assembled], config, progress=False) == [plain_text]


def test_batched_generation_equals_one_by_one(tiny_hf):
    _, row = _token_row(tiny_hf)
    tiny_hf.add_vectors({"german": row})
    assembled = [tiny_hf.assemble(p, ["german"]) for p in PROMPTS]
    config = GenerationConfig(max_new_tokens=10)
    batched = tiny_hf.generate(assembled, config, progress=False)
    assert batched == [tiny_hf.generate([a], config, progress=False)[0] for a in assembled]


def test_different_vectors_give_different_outputs(tiny_hf):
    torch.manual_seed(1)
    tiny_hf.add_vectors({"spanish": torch.randn(64) * 5, "french": torch.randn(64) * 5})
    logits = [tiny_hf.next_token_logits(tiny_hf.assemble(PROMPTS[0], [b])) for b in ("spanish", "french")]
    assert not torch.allclose(logits[0], logits[1])


def test_loglikelihood_matches_direct_computation(tiny_hf):
    token_id, row = _token_row(tiny_hf)
    tiny_hf.add_vectors({"german": row})
    assembled = tiny_hf.assemble(PROMPTS[1], ["german"])
    continuation = " The sky grows dark."
    [(total, greedy)] = tiny_hf.loglikelihood([(assembled, continuation)], progress=False)

    context = _with_token_in_text(assembled, token_id)[0]
    target = torch.tensor(tiny_hf.tokenizer.encode(continuation, add_special_tokens=False))
    logits = tiny_hf.model(input_ids=torch.cat([context, target]).unsqueeze(0)).logits[0].float()
    logprobs = torch.log_softmax(logits[len(context) - 1:-1], dim=-1)
    expected = logprobs[torch.arange(len(target)), target].sum().item()
    assert abs(total - expected) < 1e-4
    assert greedy == bool((logprobs.argmax(-1) == target).all())


def test_stop_strings_cut_the_output(tiny_hf):
    assembled = tiny_hf.assemble(PROMPTS[0], [])
    full = tiny_hf.generate([assembled], GenerationConfig(max_new_tokens=12), progress=False)[0]
    stop = full[3:5]
    cut = tiny_hf.generate([assembled], GenerationConfig(max_new_tokens=12, stop=(stop,)), progress=False)[0]
    assert cut == full[:full.find(stop)]


def test_a_nan_token_file_is_refused_before_generation(tiny_model_dir, tiny_hf, tmp_path):
    import pytest

    from steer_eval.backends.hf import HFBackend
    from steer_eval.steering.tokens import SteeringToken, TokenError, TokenStore
    TokenStore(tmp_path).save(SteeringToken("german", torch.full((64,), float("nan")), ("german",), tiny_hf.identity))
    backend = HFBackend(str(tiny_model_dir), tokens_dir=tmp_path)
    with pytest.raises(TokenError, match="'german' contains NaN"):
        backend.generate([backend.assemble(PROMPTS[0], ["german"])], progress=False)
