"""Shared fixtures: one fetched default model and one tiny random Llama per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from steer_eval.steering.embedded import fetch
    return fetch("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama with the default model's tokenizer (so chat templates are real), saved as a folder.

    Head size 32: the smallest vLLM's CPU attention supports."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _write_random_tokens(directory, model_label: str, embedding_weight: torch.Tensor, seed: int = 0) -> Path:
    """Random steering tokens (every behaviour and <and>) saved through the token store, as training would."""
    from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS
    from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenStore
    identity = ModelIdentity.of(model_label, embedding_weight)
    generator = torch.Generator().manual_seed(seed)
    scale = embedding_weight.float().std().item()
    store = TokenStore(directory)
    for name in [*BEHAVIORS, AND_TOKEN]:
        vector = torch.randn(identity.hidden_size, generator=generator) * scale
        store.save(SteeringToken(name, vector, (name,), identity))
    return store.directory


@pytest.fixture(scope="session")
def write_random_tokens():
    """write_random_tokens(directory, model_label, embedding_weight) -> directory."""
    return _write_random_tokens


@pytest.fixture(scope="session")
def tiny_tokens_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from safetensors.torch import load_file

    from steer_eval.steering.models import model_label
    embedding = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    return _write_random_tokens(tmp_path_factory.mktemp("tiny-random-tokens"), model_label(str(tiny_model_dir)),
                                embedding)


@pytest.fixture(scope="session")
def tiny_hf(tiny_model_dir, tmp_path_factory):
    from steer_eval.backends.hf import HFBackend
    return HFBackend(str(tiny_model_dir), tokens_dir=tmp_path_factory.mktemp("tiny-tokens"), batch_size=4)


@pytest.fixture(scope="session")
def default_hf(default_model_dir, tmp_path_factory):
    from steer_eval.backends.hf import HFBackend
    return HFBackend("smollm2-135m", tokens_dir=os.environ.get("STEER_EVAL_TEST_TOKENS"), batch_size=16)


class OneVLLMEngine:
    """vLLM engines are heavy on this shared machine: activating one backend shuts the others' engines down."""

    def __init__(self):
        self.backends = {}

    def activate(self, key, make):
        if key not in self.backends:
            self.backends[key] = make()
        for other_key, backend in self.backends.items():
            if other_key != key:
                backend.shutdown()
        return self.backends[key]

    def close(self):
        """Shut every engine down (a later activate() starts its engine again): frees memory for another."""
        for backend in self.backends.values():
            backend.shutdown()


@pytest.fixture(scope="session")
def vllm_engines():
    engines = OneVLLMEngine()
    yield engines
    engines.close()


VLLM_TEST_SETTINGS = {"dtype": "float32", "kv_cache_memory_bytes": 512 * 1024 ** 2}  # fp32 as the HF backend on CPU


@pytest.fixture
def vllm_default(vllm_engines, default_model_dir):
    """The default model in the vLLM backend; one engine per session (others are shut down while it runs)."""
    from steer_eval.backends.vllm import VLLMBackend
    return vllm_engines.activate("default", lambda: VLLMBackend(
        "smollm2-135m", tokens_dir=os.environ.get("STEER_EVAL_TEST_TOKENS"), max_model_len=1024,
        **VLLM_TEST_SETTINGS))


@pytest.fixture
def vllm_tiny(vllm_engines, tiny_model_dir, tmp_path_factory):
    from steer_eval.backends.vllm import VLLMBackend
    return vllm_engines.activate("tiny", lambda: VLLMBackend(
        str(tiny_model_dir), tokens_dir=tmp_path_factory.mktemp("tiny-vllm-tokens"), max_model_len=512,
        **VLLM_TEST_SETTINGS))


@pytest.fixture(autouse=True)
def package_log_as_a_library():
    """Each test starts with the package logging as a library does (to the root logger, where caplog reads it);
    a command run in-process shows it on stderr only for its own call."""
    import logging
    logger = logging.getLogger("steer_eval")
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
