"""The lm-eval model classes on the tiny random Llama: requests -> assemble -> backend, checked against direct calls."""
import re

import pytest
import torch
from lm_eval.api.instance import Instance

from steer_eval.steering.assembly import assemble, embed
from steer_eval.backends.hf import HFBackend
from steer_eval.scoring.behaviors import AND_TOKEN, BehaviorError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.lmeval.models import ModelArgsError, SteeringHFLM
from steer_eval.lmeval.tasks import compose_documents
from steer_eval.steering.tokens import TokenStore


@pytest.fixture(scope="module")
def backend(tiny_model_dir, tiny_tokens_dir):
    return HFBackend(str(tiny_model_dir), tokens_dir=tiny_tokens_dir, batch_size=4)


def request(context, doc=None, gen_kwargs=None, kind="generate_until"):
    arguments = (context, gen_kwargs or {}) if kind in ("generate_until", "loglikelihood") else (context,)
    return Instance(request_type=kind, doc=doc or {}, arguments=arguments, idx=0)


def test_generate_until_reads_behaviours_order_and_mode_from_the_document(backend):
    doc = compose_documents(2, "seen")[1]  # the second order of the first pair
    lm = SteeringHFLM(backend=backend, control_method="steering", mode="composition")
    [response] = lm.generate_until([request(doc["text_input"], doc, {"until": [], "max_gen_toks": 6})])
    expected = assemble(doc["prompt"], doc["behaviors"], backend.tokenizer, mode="composition")
    assert response == backend.generate([expected], GenerationConfig(max_new_tokens=6), progress=False)[0]
    assert response.setting["steering"] == [doc["behaviors"][0], AND_TOKEN, doc["behaviors"][1]]
    assert (response.setting["control_method"], response.setting["mode"]) == ("steering", "composition")


def test_text_control_uses_the_documents_paraphrases(backend):
    doc = compose_documents(2, "unseen")[0]
    lm = SteeringHFLM(backend=backend, control_method="text", seed=7)  # the seed must not change the paraphrase
    assembled = lm.assembled(request(doc["text_input"], doc))
    assert not assembled.slots
    assert assembled.instruction in doc["text_input"]


def test_until_and_max_gen_toks_are_respected(backend):
    lm = SteeringHFLM(backend=backend, control_method="steering", steering="spanish")
    [full] = lm.generate_until([request("Why is the sky blue?", gen_kwargs={"max_gen_toks": 12})])
    assert full, "the tiny model produced no text; pick another prompt"
    stop = full[3:5]
    [cut] = lm.generate_until([request("Why is the sky blue?", gen_kwargs={"until": [stop], "max_gen_toks": 12})])
    assert cut == full[:full.find(stop)]
    [short] = lm.generate_until([request("Why is the sky blue?", gen_kwargs={"until": "never", "max_gen_toks": 3})])
    assembled = lm.assembled(request("Why is the sky blue?"))
    assert short == backend.generate([assembled], GenerationConfig(max_new_tokens=3), progress=False)[0]
    assert full.startswith(short)


def test_fixed_steering_list_applies_to_documents_without_behaviours(backend):
    lm = SteeringHFLM(backend=backend, steering="german+<and>+words_10_50")
    assembled = lm.assembled(request("What is 2 + 2?", {"question": "What is 2 + 2?"}))
    assert assembled.token_names == ("german", AND_TOKEN, "words_10_50")
    assert assembled.prompt == "What is 2 + 2?"
    assert SteeringHFLM(backend=backend, steering="german+words_10_50").fixed_mode == "concatenation"
    with pytest.raises(BehaviorError, match="both language behaviours"):
        SteeringHFLM(backend=backend, steering="german+french")


def test_chat_rendered_by_apply_chat_template_is_assembled_from_its_turns(backend):
    lm = SteeringHFLM(backend=backend, steering="german")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    rendered = lm.apply_chat_template(chat)
    assert rendered == backend.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assembled = lm.assembled(request(rendered))
    assert assembled == assemble("Name a river.", ["german"], backend.tokenizer, system_prompt="Be brief.")
    multi_turn = lm.apply_chat_template(chat + [{"role": "assistant", "content": "Nile."},
                                                {"role": "user", "content": "Another."}])
    with pytest.raises(BehaviorError, match="one user turn"):
        lm.assembled(request(multi_turn))


def _direct_logprob(backend, assembled, text):
    """Independent reference: one forward over [prompt rows (slots replaced), text rows], summed log-probs."""
    vectors = {name: TokenStore(backend.store.directory).load(name).vector for name in assembled.token_names}
    target = torch.tensor(backend.tokenizer.encode(text, add_special_tokens=False))
    rows = torch.cat([embed(assembled, backend.embeddings, vectors), backend.embeddings.rows(target)])
    with torch.no_grad():
        logits = backend.model(inputs_embeds=rows.unsqueeze(0)).logits[0].float()
    logprobs = torch.log_softmax(logits[len(assembled.input_ids) - 1:-1], dim=-1)
    return logprobs[torch.arange(len(target)), target].sum().item()


def test_loglikelihood_scores_the_continuation_after_the_assembled_prompt(backend):
    doc = compose_documents(2, "seen")[0]
    lm = SteeringHFLM(backend=backend, control_method="hybrid", mode="concatenation")
    [(total, _)] = lm.loglikelihood([request(doc["text_input"], doc, " Hola amigos.", kind="loglikelihood")])
    assembled = lm.assembled(request(doc["text_input"], doc))
    assert assembled.token_names == tuple(doc["behaviors"]) and assembled.instruction
    assert total == pytest.approx(_direct_logprob(backend, assembled, " Hola amigos."), abs=1e-4)


def test_loglikelihood_rolling_equals_stock_hf_without_behaviours_and_steers_with_them(backend, tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    text = "The quick brown fox jumps over the lazy dog. It was a sunny day in the valley."
    stock = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=1)
    [expected] = stock.loglikelihood_rolling([request(text, kind="loglikelihood_rolling")])
    plain = SteeringHFLM(backend=backend)
    [ours] = plain.loglikelihood_rolling([request(text, kind="loglikelihood_rolling")])
    assert ours == pytest.approx(expected, abs=1e-3)

    steered = SteeringHFLM(backend=backend, steering="german")
    [with_german] = steered.loglikelihood_rolling([request(text, kind="loglikelihood_rolling")])
    context = assemble("", ["german"], backend.tokenizer)
    assert with_german == pytest.approx(_direct_logprob(backend, context, text), abs=1e-4)
    assert with_german != pytest.approx(ours, abs=1e-3)


def test_model_args_parse_and_win_over_lm_evals_defaults(tiny_model_dir, backend):
    lm = SteeringHFLM.create_from_arg_string(
        f"pretrained={tiny_model_dir},tokens_dir={backend.store.directory},control_method=text,batch_size=3,"
        "max_gen_toks=5,steering=spanish+<and>+lowercase",
        {"batch_size": 1, "max_batch_size": None, "device": "cuda"})  # what lm-eval's CLI adds by default
    assert lm.backend.batch_size == 3 and lm.max_gen_toks == 5 and lm.control_method == "text"
    assert lm.fixed_behaviors == ["spanish", "lowercase"] and lm.fixed_mode == "composition"
    assert str(lm.backend.device) == "cpu"
    with pytest.raises(ModelArgsError, match="steering_hf does not take model_args enforce_eager; it takes pretrained"):
        SteeringHFLM.create_from_arg_string(f"pretrained={tiny_model_dir},enforce_eager=True")
    for bad, message in [("data_parallel_size=0", "data_parallel_size=0 is out of range; it must be >= 1"),
                         ("seed=1.5", "seed=1.5 is not an integer"), ("batch_size=0", "batch_size=0 is out of range"),
                         ("max_length=abc", "max_length=abc is not an integer")]:
        with pytest.raises(ModelArgsError, match=re.escape(message)):
            SteeringHFLM.create_from_arg_string(f"pretrained={tiny_model_dir},{bad}")
    with pytest.raises(BehaviorError, match="unknown control_method 'loud'"):
        SteeringHFLM(backend=backend, control_method="loud")


def test_missing_tokens_fail_before_any_generation(tiny_model_dir, tmp_path):
    from steer_eval.steering.tokens import TokenError
    empty = HFBackend(str(tiny_model_dir), tokens_dir=tmp_path, batch_size=4)
    lm = SteeringHFLM(backend=empty, control_method="steering")
    doc = compose_documents(2, "seen")[0]
    with pytest.raises(TokenError, match=r"need steering tokens .*<and>.*available: none.*control_method=text"):
        lm.generate_until([request(doc["text_input"], doc, {"until": [], "max_gen_toks": 4})])
