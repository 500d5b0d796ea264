"""Every model family steer-eval claims, as tiny random models built from configs (no download): the assembly's
inputs_embeds equal the model's own embedding path, the HF and vLLM backends steer identically, a distillation
step learns, and activation hooks find the decoder blocks. Gemma scales its embeddings inside the module (by
sqrt(hidden), 8 here), Granite multiplies them in the forward, five families have untied output heads."""
import pytest
import torch
import transformers

from steer_eval.steering.activation import Intervention
from steer_eval.steering.assembly import assemble, embed
from steer_eval.backends.hf import HFBackend
from steer_eval.training.distillation import distillation_step
from steer_eval.steering.embedding_space import UnsupportedModelError, measure_scale
from steer_eval.steering.tokens import SteeringToken, TokenStore

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
FAMILIES = {  # config class, family-specific settings; head size 32: the smallest vLLM's CPU attention supports
    "llama": (transformers.LlamaConfig, {"tie_word_embeddings": True}),
    "qwen2": (transformers.Qwen2Config, {"tie_word_embeddings": False}),
    "qwen3": (transformers.Qwen3Config, {"head_dim": 32, "tie_word_embeddings": False}),
    "mistral": (transformers.MistralConfig, {"tie_word_embeddings": False}),
    "gemma2": (transformers.Gemma2Config, {"head_dim": 32, "tie_word_embeddings": True}),
    "gemma3": (transformers.Gemma3TextConfig, {"head_dim": 32, "tie_word_embeddings": True}),
    "phi3": (transformers.Phi3Config, {"tie_word_embeddings": False}),
    "olmo2": (transformers.Olmo2Config, {"tie_word_embeddings": False}),
    "granite": (transformers.GraniteConfig, {"embedding_multiplier": 12.0, "tie_word_embeddings": True}),
}
SCALED = {"gemma2": 8.0, "gemma3": 8.0}
PROMPT = "Why is the sky blue?"


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tokenizer):
    """family -> folder of a 2-layer random model of it, with the default model's tokenizer (a real template)."""
    folders = {}
    for name, (config_class, settings) in FAMILIES.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            config_class(vocab_size=len(tokenizer), **SHAPE, **settings))
        folders[name] = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


@pytest.fixture(scope="session")
def family_backends(family_dirs):
    return {name: HFBackend(str(folder), batch_size=2) for name, folder in family_dirs.items()}


def _steering_tokens(backend, directory, seed=0) -> TokenStore:
    """Random vectors for german and <and>, as large as the prompt rows the model actually reads."""
    generator = torch.Generator().manual_seed(seed)
    rows = backend.embeddings.rows(torch.arange(1000))
    store = TokenStore(directory)
    for name in ("german", "<and>", "uppercase"):
        vector = torch.randn(backend.identity.hidden_size, generator=generator) * rows.float().std()
        store.save(SteeringToken(name, vector, (name,), backend.identity))
    return store


@pytest.mark.parametrize("family", FAMILIES)
def test_the_assembly_feeds_what_the_embedding_module_makes(family, family_backends):
    backend = family_backends[family]
    assert backend.embeddings.scale == SCALED.get(family, 1.0)
    assembled = assemble(PROMPT, ["german"], backend.tokenizer, control_method="text")
    ids = torch.tensor([assembled.input_ids])
    with torch.no_grad():
        from_ids = backend.model(input_ids=ids).logits
        from_assembly = backend.model(inputs_embeds=embed(assembled, backend.embeddings, {}).unsqueeze(0)).logits
        from_raw_rows = backend.model(inputs_embeds=backend.embedding_weight[ids]).logits  # the embed of before
    assert torch.equal(from_ids, from_assembly)
    assert torch.equal(from_ids, from_raw_rows) is (family not in SCALED)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_distillation_step_learns(family, family_backends):
    backend = family_backends[family]
    torch.manual_seed(0)
    student = [assemble(PROMPT, ["german"], backend.tokenizer)]
    teacher = [assemble(PROMPT, ["german"], backend.tokenizer, control_method="text")]
    response = [backend.tokenizer.encode("Der Himmel ist blau, weil Licht gestreut wird.", add_special_tokens=False)]
    start = backend.embeddings.rows(torch.tensor(backend.tokenizer.encode("German", add_special_tokens=False)))
    vector = torch.nn.Parameter(start.float().mean(0))
    optimizer = torch.optim.Adam([vector], lr=0.05)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        losses.append(distillation_step(backend.model, teacher, student, response, {"german": vector}, 1.0).item())
        optimizer.step()
    assert vector.grad is not None and torch.isfinite(vector.grad).all()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_vectors_reach_the_decoder_blocks(family, family_backends):
    backend = family_backends[family]
    assembled = assemble(PROMPT, ["german"], backend.tokenizer, control_method="caa")
    plain = backend.next_token_logits(assemble(PROMPT, [], backend.tokenizer, control_method="text"))
    vector = torch.ones(backend.identity.hidden_size) * 10
    backend.use_activation_vectors([SteeringToken("caa/german", vector, ("german",), backend.identity,
                                                  intervention=Intervention("caa", 1, 0, 1.0))])
    steered = backend.next_token_logits(assembled)
    assert not torch.allclose(plain, steered)


def test_a_module_that_is_no_scaled_lookup_is_refused():
    class Positional(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + torch.arange(ids.shape[0])[:, None]
    with pytest.raises(UnsupportedModelError, match="family 'odd'.*not a row lookup times one number"):
        measure_scale(Positional(32, 8), "odd")


VLLM_PROMPTS = [(PROMPT, ["german"], "steering"), (PROMPT, ["german", "uppercase"], "steering"),
                ("Name a fruit.", [], "text")]


@pytest.fixture(scope="module")
def vllm_family_runs(family_dirs, family_backends, tmp_path_factory):
    """family -> (its HF backend reading the tokens the engine got, what the vLLM engine made), every engine in one
    process (engines_in_one_process.py)."""
    from engines_in_one_process import generate_in_one_process
    jobs = []
    for family, folder in family_dirs.items():
        hf = family_backends[family]
        hf.store = _steering_tokens(hf, tmp_path_factory.mktemp(f"tokens-{family}"))
        hf._vectors.clear()
        jobs.append({"model": str(folder), "tokens_dir": str(hf.store.directory), "prompts": VLLM_PROMPTS,
                     "max_new_tokens": 8, "engine": {"max_model_len": 256, "dtype": "float32",
                                                     "kv_cache_memory_bytes": 256 * 1024 ** 2}})
    return dict(zip(family_dirs, generate_in_one_process(jobs)))


@pytest.mark.vllm
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_and_vllm_steer_identically(family, family_backends, vllm_family_runs):
    from engines_in_one_process import assert_same_as_hf
    assert_same_as_hf(vllm_family_runs[family], family_backends[family], VLLM_PROMPTS, max_new_tokens=8)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_trainer_starts_and_learns_in_the_steering_space(family, family_dirs, family_backends, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from steer_eval.scoring.behaviors import get_behavior
    from steer_eval.training.examples import semantic_init
    backend = family_backends[family]
    ids = backend.tokenizer.encode(get_behavior("german").instructions[0], add_special_tokens=False)
    module_rows = backend.model.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(semantic_init("german", backend.tokenizer, backend.embeddings),
                       module_rows.float().mean(0))  # Gemma: 8x the weight's rows
    data = tmp_path / "german.json"
    data.write_text(json.dumps([{"prompt": f"Why is the sky blue? ({i})", "response": "Weil Licht gestreut wird.",
                                 "behaviors": ["german"]} for i in range(4)]))
    trainer = Path(__file__).parents[1] / "trainers" / "train.py"
    command = [sys.executable, str(trainer), "--model", str(family_dirs[family]), "--data", str(data),
               "--out_dir", str(tmp_path / "run"), "--tokens_dir", str(tmp_path / "tokens"), "--batch_size", "2",
               "--epochs", "3", "--lr", "3e-2", "--log_every", "1", "--temperature", "1.0",
               "--chat_template_kwargs", '{"enable_thinking": false}', "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["chat_template_kwargs"] \
        == '{"enable_thinking": false}'


TEMPLATES = {  # the user turn as each family's template writes it, reduced to what matters here
    "gemma": ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
              "{{ m.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
              "<end_of_turn>\n<start_of_turn>model\n"),
    "llama3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
               "{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}", "<|eot_id|><|start_header_id|>"),
    "mistral": ("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}", " [/INST]"),
}


@pytest.mark.parametrize("family", TEMPLATES)
def test_the_slot_sits_right_after_the_prompt_in_every_template(family, tokenizer):
    import copy
    template, after_user = TEMPLATES[family]
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = template
    for control_method in ("steering", "hybrid"):
        assembled = assemble(PROMPT, ["german", "words_10_50"], templated, control_method=control_method)
        first, last = assembled.slots[0][0], assembled.slots[-1][0]
        assert [position for position, _ in assembled.slots] == list(range(first, last + 1))
        assert templated.decode(assembled.input_ids[:first]).endswith(PROMPT)
        rest = templated.decode(assembled.input_ids[last + 1:])
        assert rest.startswith("\n\n" if control_method == "hybrid" else after_user)
        assert after_user in rest
