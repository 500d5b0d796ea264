"""Shared fixtures: one fetched default model and one tiny random Llama per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from steer_eval.models import fetch
    return fetch("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama with the default model's tokenizer (so chat templates are real), saved as a folder."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_hf(tiny_model_dir, tmp_path_factory):
    from steer_eval.backends.hf import HFBackend
    return HFBackend(str(tiny_model_dir), tokens_dir=tmp_path_factory.mktemp("tiny-tokens"), batch_size=4)


@pytest.fixture(scope="session")
def default_hf(default_model_dir, tmp_path_factory):
    from steer_eval.backends.hf import HFBackend
    return HFBackend("smollm2-135m", tokens_dir=os.environ.get("STEER_EVAL_TEST_TOKENS"), batch_size=16)
