"""vLLM backend exactness: steering rows against plain token ids, against the HF backend, under prefix caching.

Default-model tests come first and tiny-model tests last, so each engine starts once per session
(tests/conftest.py keeps at most one running). Both engines run in float32, like the HF backend on CPU.
"""
import pytest
import torch

from steer_eval.scoring.behaviors import AND_TOKEN, get_behavior
from steer_eval.backends.generation import GenerationConfig
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.steering.tokens import TokenError

pytestmark = pytest.mark.vllm

PROMPTS = ["Why do cats purr?", "Describe a thunderstorm over the sea at night.", "Give me a tip for learning to cook."]


def _token(backend, text):
    token_id = backend.tokenizer.encode(text, add_special_tokens=False)[0]
    return token_id, backend.embedding_weight[token_id].clone()


def _plain_ids(assembled, token_of):
    """The assembled ids with each steering slot holding an ordinary vocabulary token instead."""
    ids = list(assembled.input_ids)
    for position, name in assembled.slots:
        ids[position] = token_of[name]
    return ids


def _plain_vllm(backend, id_lists, max_tokens):
    """vLLM's own greedy output for ordinary token-id prompts (no steering rows involved)."""
    from vllm import SamplingParams
    outputs = backend.llm.generate([{"prompt_token_ids": ids} for ids in id_lists],
                                   SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
    return [output.outputs[0].text for output in outputs]


def _semantic_init(backend, behavior):
    """The paper's initialisation: mean embedding of the instruction's tokens (a realistic untrained vector)."""
    ids = backend.tokenizer.encode(get_behavior(behavior).instructions[0], add_special_tokens=False)
    return backend.embedding_weight[ids].mean(0)


# --- default model ---------------------------------------------------------------------------------------------

def test_rows_equal_to_token_embeddings_reproduce_the_plain_prompt(vllm_default):
    tokens = {"german": " German", AND_TOKEN: " and", "words_10_50": " briefly"}
    token_of = {}
    for name, text in tokens.items():
        token_of[name], row = _token(vllm_default, text)
        vllm_default.add_vectors({name: row})
    assembled = [vllm_default.assemble(p, ["german"]) for p in PROMPTS]
    assembled += [vllm_default.assemble(p, ["german", "words_10_50"], mode="composition") for p in PROMPTS]
    assembled += [vllm_default.assemble(p, ["german"], control_method="hybrid") for p in PROMPTS]

    steered = vllm_default.generate(assembled, GenerationConfig(max_new_tokens=32), progress=False)
    plain = _plain_vllm(vllm_default, [_plain_ids(a, token_of) for a in assembled], 32)
    assert steered == plain
    assert len(set(steered)) > 1


# Measured on this CPU with both backends in float32: 0 of 24 greedy outputs differed (48 new tokens each); the test
# runs 18 (40 new tokens) to keep the suite under 20 minutes.
# Different matmul kernels can still flip a near-tie between two tokens, after which the texts part ways; allow
# at most MAX_DIVERGENT such prompts, and only after a shared start, so a real mismatch still fails.
MAX_DIVERGENT = 2
MIN_SHARED_PREFIX = 20  # characters


def test_hf_and_vllm_backends_agree_on_greedy_steering_outputs(vllm_default, default_hf):
    torch.manual_seed(0)
    vectors = {"german": _semantic_init(default_hf, "german"),
               "words_10_50": _semantic_init(default_hf, "words_10_50"),
               AND_TOKEN: torch.randn(default_hf.identity.hidden_size) * 0.02}
    for backend in (vllm_default, default_hf):
        backend.add_vectors(vectors)
    prompts = [p.prompt for p in bundled_prompts("test")[:6]]
    assembled = [default_hf.assemble(p, ["german"]) for p in prompts]
    assembled += [default_hf.assemble(p, ["german", "words_10_50"], mode="composition") for p in prompts]
    assembled += [default_hf.assemble(p, ["words_10_50"], control_method="hybrid") for p in prompts]
    config = GenerationConfig(max_new_tokens=40)

    hf = default_hf.generate(assembled, config, progress=False)
    vllm = vllm_default.generate(assembled, config, progress=False)
    divergent = [(a, b) for a, b in zip(hf, vllm) if a != b]
    assert len(divergent) <= MAX_DIVERGENT, divergent
    for a, b in divergent:
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert shared >= MIN_SHARED_PREFIX, (a, b)


CAPITALS = ["France - Paris", "Japan - Tokyo", "Italy - Rome", "Spain - Madrid", "Germany - Berlin", "Egypt - Cairo",
            "Kenya - Nairobi", "Peru - Lima", "Canada - Ottawa", "Norway - Oslo", "Greece - Athens"]


def _slot_in_a_full_block(backend, block_size):
    """A prompt whose steering slot lies in a full KV block, the unit the prefix cache stores and reuses."""
    for count in range(len(CAPITALS), 20 * len(CAPITALS)):  # one pair more each time: ~5 tokens, not a block
        listing = ". ".join(CAPITALS[i % len(CAPITALS)] for i in range(count))
        prompt = f"Here is a list of countries and their capital cities. {listing}.\n\nQuestion: what is the capital of"
        assembled = backend.assemble(prompt, ["spanish"])
        slot = assembled.slots[0][0]
        if len(assembled.input_ids) >= (slot // block_size + 1) * block_size:
            return assembled
    raise AssertionError("no prompt length puts the slot in a full block")


def test_prefix_cache_never_serves_a_rewritten_row(vllm_default):
    cache = vllm_default.llm.llm_engine.vllm_config.cache_config
    assert cache.enable_prefix_caching
    assembled = _slot_in_a_full_block(vllm_default, cache.block_size)
    config = GenerationConfig(max_new_tokens=16)
    outputs, plains = [], []
    for text in (" France", " Japan"):
        token_id, row = _token(vllm_default, text)
        vllm_default.add_vectors({"spanish": row})  # same name, so the same row and the same token ids
        outputs.append(vllm_default.generate([assembled], config, progress=False)[0])
        plains.append(_plain_vllm(vllm_default, [_plain_ids(assembled, {"spanish": token_id})], 16)[0])
    assert outputs == plains
    assert "Paris" in outputs[0] and "Tokyo" in outputs[1]

    # The test can fail: a repeat of the same steered prompt is served from the cache, slot included.
    from vllm import SamplingParams
    [repeat] = vllm_default.llm.generate([{"prompt_token_ids": vllm_default.token_ids(assembled)}],
                                         SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)
    assert repeat.num_cached_tokens > assembled.slots[0][0]


def test_spare_rows_are_never_sampled(vllm_default, default_hf):
    # A row equal to 100x the embedding of the greedy next token would win the argmax if it were not masked:
    # with tied embeddings its logit is 100x that token's (positive) logit.
    probe = vllm_default.assemble(PROMPTS[0], [])
    expected = vllm_default.generate([probe], GenerationConfig(max_new_tokens=8), progress=False)
    logits = default_hf.next_token_logits(probe)
    assert logits.max() > 0
    vllm_default.add_vectors({"uppercase": 100 * default_hf.embedding_weight[logits.argmax()]})
    carrier = vllm_default.assemble(PROMPTS[1], ["uppercase"])  # puts the row into the engine
    assert vllm_default.generate([probe, carrier], GenerationConfig(max_new_tokens=8), progress=False)[0] == \
        expected[0]


def test_loglikelihood_matches_direct_hf_computation(vllm_default, default_hf):
    token_id, row = _token(vllm_default, " German")
    torch.manual_seed(1)
    vectors = {"german": row, "french": _semantic_init(default_hf, "french")}
    for backend in (vllm_default, default_hf):
        backend.add_vectors(vectors)
    requests = [(vllm_default.assemble(PROMPTS[0], ["german"]), " Cats purr when they are content."),
                (vllm_default.assemble(PROMPTS[1], ["french"]), " Le ciel est noir."),
                (vllm_default.assemble(PROMPTS[2], [], control_method="text"), " Taste as you go."),
                (vllm_default.assemble(PROMPTS[2], ["german"]), "")]
    got = vllm_default.loglikelihood(requests, progress=False)

    # Independent reference for the first request: HF on plain token ids, no steering machinery at all.
    context = torch.tensor(_plain_ids(requests[0][0], {"german": token_id}))
    target = torch.tensor(vllm_default.tokenizer.encode(requests[0][1], add_special_tokens=False))
    with torch.inference_mode():
        logits = default_hf.model(input_ids=torch.cat([context, target]).unsqueeze(0)).logits[0].float()
    logprobs = torch.log_softmax(logits[len(context) - 1:-1], dim=-1)
    direct = (logprobs[torch.arange(len(target)), target].sum().item(),
              bool((logprobs.argmax(-1) == target).all()))
    expected = [direct] + default_hf.loglikelihood(requests[1:], progress=False)
    for (total, greedy), (ref_total, ref_greedy) in zip(got, expected):
        assert total == pytest.approx(ref_total, abs=2e-3)
        assert greedy == ref_greedy
    assert got[3] == (0.0, True)


def test_bad_inputs_fail_before_reaching_the_engine(vllm_default):
    with pytest.raises(TokenError, match="NaN"):
        vllm_default.add_vectors({"italian": torch.full((vllm_default.identity.hidden_size,), float("nan"))})
    with pytest.raises(TokenError, match="shape"):
        vllm_default.add_vectors({"italian": torch.zeros(3)})
    with pytest.raises(TypeError, match="assemble"):
        vllm_default.generate(["plain text"], progress=False)
    with pytest.raises(ValueError, match="max_model_len"):
        vllm_default.generate([vllm_default.assemble("word " * 1100, [])], progress=False)


# --- tiny random model (its greedy text is mostly repeated tokens, so exactness is checked on log-probs) ------

def test_tiny_rows_equal_to_token_embeddings_give_identical_numbers(vllm_tiny):
    token_id, row = _token(vllm_tiny, " German")
    other_id, other = _token(vllm_tiny, " Paris")
    vllm_tiny.add_vectors({"german": row, "french": other})
    steered = [vllm_tiny.assemble(p, ["german"]) for p in PROMPTS]
    continuation = " The sky grows dark over the water."
    got = vllm_tiny.loglikelihood([(a, continuation) for a in steered], progress=False)
    plain = _plain_loglikelihood(vllm_tiny, [_plain_ids(a, {"german": token_id}) for a in steered], continuation)
    assert [total for total, _ in got] == plain  # same engine, same rows' values: bit-identical
    swapped = vllm_tiny.loglikelihood([(vllm_tiny.assemble(PROMPTS[0], ["french"]), continuation)], progress=False)
    assert swapped[0][0] != got[0][0]

    config = GenerationConfig(max_new_tokens=16)
    assert vllm_tiny.generate(steered, config, progress=False) == \
        _plain_vllm(vllm_tiny, [_plain_ids(a, {"german": token_id}) for a in steered], 16)


def _plain_loglikelihood(backend, id_lists, continuation):
    from vllm import SamplingParams
    target = backend.tokenizer.encode(continuation, add_special_tokens=False)
    outputs = backend.llm.generate([{"prompt_token_ids": ids + target} for ids in id_lists],
                                   SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    return [sum(out.prompt_logprobs[p][tok].logprob for p, tok in enumerate(ids + target) if p >= len(ids))
            for ids, out in zip(id_lists, outputs)]


def test_tiny_seeded_sampling_and_stop_strings(vllm_tiny):
    assembled = [vllm_tiny.assemble(p, []) for p in PROMPTS]
    sample = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=3)
    first = vllm_tiny.generate(assembled, sample, progress=False)
    assert vllm_tiny.generate(assembled[::-1], sample, progress=False) == first[::-1]  # batch-independent
    assert vllm_tiny.generate(assembled, GenerationConfig(max_new_tokens=16, temperature=1.0, seed=4),
                              progress=False) != first

    full = first[0]
    stop = full[3:5]
    cut = vllm_tiny.generate(assembled[:1], GenerationConfig(max_new_tokens=16, temperature=1.0, seed=3,
                                                             stop=(stop,)), progress=False)[0]
    assert cut == full[:full.find(stop)]


def test_tiny_rows_are_rewritten_after_a_restart(vllm_tiny):
    _, row = _token(vllm_tiny, " German")
    vllm_tiny.add_vectors({"german": row})
    assembled = [vllm_tiny.assemble(p, ["german"]) for p in PROMPTS]
    before = vllm_tiny.loglikelihood([(a, " The end.") for a in assembled], progress=False)
    vllm_tiny.shutdown()  # the next call starts a fresh engine whose spare rows are zeros
    assert vllm_tiny.loglikelihood([(a, " The end.") for a in assembled], progress=False) == before


def test_cpu_defaults_are_eager_and_float32_where_bfloat16_is_emulated():
    from steer_eval.backends.vllm import CPU_KV_CACHE_BYTES, cpu_engine_defaults
    emulated = cpu_engine_defaults({}, native_bf16=False)
    assert emulated == {"enforce_eager": True, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "dtype": "float32"}
    assert cpu_engine_defaults({"dtype": "auto"}, native_bf16=False)["dtype"] == "float32"
    assert "dtype" not in cpu_engine_defaults({}, native_bf16=True)  # vLLM's own choice where bf16 is native
    chosen = {"dtype": "bfloat16", "enforce_eager": False, "kv_cache_memory_bytes": 1 << 30}
    assert cpu_engine_defaults(chosen, native_bf16=False) == chosen  # what the caller chose stays
    assert "kv_cache_memory_bytes" not in cpu_engine_defaults({"gpu_memory_utilization": 0.5}, native_bf16=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults apply where no GPU is")
def test_the_backend_applies_the_cpu_defaults_to_its_engine(default_model_dir):
    from steer_eval.backends.vllm import VLLMBackend, cpu_engine_defaults, cpu_has_native_bf16
    backend = VLLMBackend("smollm2-135m", max_model_len=512)  # the engine starts only on first use: never here
    expected = cpu_engine_defaults({}, cpu_has_native_bf16())
    assert {key: backend.engine_kwargs[key] for key in expected} == expected
