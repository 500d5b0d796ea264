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


class VLLMEngines:
    """One engine per key for the whole session, each in its own engine-core process (vLLM's default; engines in
    the test process share vLLM's global parallel state, so one engine's shutdown broke the others, and its
    Transformers fallback patches Hugging Face classes the HF backend then runs). A test about restarts shuts its
    own engine down, and the backend starts it again on its next call."""

    def __init__(self):
        self.backends = {}

    def activate(self, key, make):
        if key not in self.backends:
            self.backends[key] = make()
        return self.backends[key]

    def close(self):
        for backend in self.backends.values():
            backend.shutdown()


@pytest.fixture(scope="session")
def vllm_engines():
    engines = VLLMEngines()
    yield engines
    engines.close()


# fp32 as the HF backend on CPU; eager (no torch.compile: 93-117 s of the default model's start on two cores, and
# nothing these tests check depends on it). vLLM on CPU runs its worker in a process of its own whatever the
# executor setting (engines_in_one_process.py shows the one way around that).
VLLM_TEST_SETTINGS = {"dtype": "float32", "kv_cache_memory_bytes": 512 * 1024 ** 2, "enforce_eager": True}


@pytest.fixture
def vllm_default(vllm_engines, default_model_dir):
    """The default model in the vLLM backend; one engine per session."""
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


@pytest.fixture(scope="session")
def lm_eval_index_cache():
    """lm-eval parses its ~12,000 task YAML files for every TaskManager (15-30 s on two cores, per run in this
    process). This keeps what its index parsed from its own, never-changing task folder for the session; our task
    folders and users' copies are read fresh. Request it in tests that run lm-eval in this process."""
    import copy

    import lm_eval
    from lm_eval.tasks import _index

    own = Path(lm_eval.__file__).resolve().parent
    original = _index.load_yaml
    parsed = {}

    def load_yaml(path, **options):
        resolved = Path(path).expanduser().resolve()
        if own not in resolved.parents:
            return original(path, **options)
        key = (resolved, tuple(sorted(options.items())))
        if key not in parsed:
            try:
                parsed[key] = original(path, **options)
            except Exception as error:  # the index skips such files; keep skipping them the same way
                parsed[key] = error
        if isinstance(parsed[key], Exception):
            raise parsed[key]
        return copy.deepcopy(parsed[key])

    _index.load_yaml = load_yaml
    yield
    _index.load_yaml = original


@pytest.fixture
def lm_eval_main(monkeypatch, capsys, lm_eval_index_cache):
    """lm_eval_main(cwd, *args): `lm_eval <args>` in this process from `cwd`, as its console script runs it
    (lm_eval.__main__.cli_evaluate on sys.argv) -> (stdout, stderr). An exception that would end the process is
    handed to sys.excepthook, as the interpreter would, and raised again (pytest.raises around the call)."""
    import logging
    import sys

    import lm_eval.utils
    from lm_eval.__main__ import cli_evaluate

    from steer_eval.lmeval.plugin import report_user_errors

    def main(cwd, *args: str) -> tuple[str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["lm_eval", *map(str, args)])
        # lm-eval configures its logger once per process, on the stderr of that moment (a test's capture): each
        # run here gets a fresh configuration, as a fresh process would.
        logger = logging.getLogger("lm_eval")
        monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", False)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
        # The excepthook as a fresh process has it once lm-eval's registry is imported (the hook installs it then;
        # here lm-eval was imported long ago, and an in-process ray.init replaces sys.excepthook with Ray's own).
        # That the installed script really gets it: test_lmeval_cli's console-script test, in a subprocess.
        monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
        report_user_errors()
        capsys.readouterr()
        try:
            cli_evaluate()
        except Exception as error:
            sys.excepthook(type(error), error, error.__traceback__)
            error.captured = capsys.readouterr()
            raise
        return capsys.readouterr()

    return main


ENGINE_FIXTURES = {"vllm_default", "vllm_tiny"}
ENGINE_GROUP = "vllm-engines"


def _shares_module_fixture(item) -> bool:
    return any(definition.scope in ("module", "class", "package")
               for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions)


HEAVY_MARKS = ("vllm", "slow", "e2e")


def _heaviness(item) -> tuple:
    """Sort key: the engine group first, then tests marked vllm, slow or e2e, so no long group starts last."""
    in_engine_group = any(mark.args == (ENGINE_GROUP,) for mark in item.iter_markers("xdist_group"))
    return (not in_engine_group, *(item.get_closest_marker(mark) is None for mark in HEAVY_MARKS))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the groups into node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (scripts/test.sh runs two workers, --dist loadgroup): the tests of the session's vLLM
    engines run on one worker, so each engine starts once, and so do the tests of a module that share a
    module-scoped fixture (a model, a server, a cluster). Every worker collects and sorts the same way."""
    if not getattr(config.option, "loadgroup", False):  # set on the workers, where collection happens
        return
    engine_items = {item for item in items if ENGINE_FIXTURES & set(item.fixturenames)}
    modules_with_engines = {item.module.__name__ for item in engine_items}
    for item in items:
        module = item.module.__name__
        shares = _shares_module_fixture(item)
        if item in engine_items or (shares and module in modules_with_engines):
            item.add_marker(pytest.mark.xdist_group(ENGINE_GROUP))
        elif shares:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=_heaviness)
