"""Steering per request, without a server: the fields are read and checked as the server does, and a rewritten
request carries exactly the token ids `assemble()` gives the vLLM backend (spare-row ids in the slots). The served
tokenizer knows the tokens' texts as special tokens, tokenising a rendered chat that contains them as vLLM's chat
handler does. tests/test_serve.py checks the same against a running server."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from steer_eval.serving.served_model import ServedSteering, served_folder, token_text
from steer_eval.serving.steering_request import FIELDS, RequestError, read_steering, steer
from steer_eval.steering.assembly import assemble

NAMES = ["<and>", "french", "german", "sentences_1", "words_10_50"]  # a store without spanish
VOCAB = 49152


@pytest.fixture(scope="module")
def served_tokenizer(default_model_dir, tmp_path_factory):
    import os
    from unittest import mock

    from transformers import AutoTokenizer
    with mock.patch.dict(os.environ, {"STEER_EVAL_HOME": str(tmp_path_factory.mktemp("home"))}):
        folder = served_folder(default_model_dir, {name: VOCAB + i for i, name in enumerate(NAMES)})
        assert (folder / "tokenizer.json").is_file() and served_folder(default_model_dir, {
            name: VOCAB + i for i, name in enumerate(NAMES)}) == folder  # built once
        return AutoTokenizer.from_pretrained(folder)


def served(tokenizer, steering_in_text=False) -> ServedSteering:
    backend = SimpleNamespace(tokenizer=tokenizer, chat_template_kwargs={},
                              extended=SimpleNamespace(vocab_size=VOCAB, spare_rows=64))
    return ServedSteering(backend, {name: VOCAB + i for i, name in enumerate(NAMES)},
                          {name: f"fp-{i}" for i, name in enumerate(NAMES)}, [], None, steering_in_text)


def expected_ids(tokenizer, prompt, behaviors, system=None, **options) -> list[int]:
    assembled = assemble(prompt, behaviors, tokenizer, system_prompt=system, **options)
    ids = list(assembled.input_ids)
    for position, name in assembled.slots:
        ids[position] = VOCAB + NAMES.index(name)
    return ids


def vllm_chat_ids(served_tokenizer, messages) -> list[int]:
    """What vLLM's chat handler sends the engine: the template rendered, then tokenised without added specials."""
    text = served_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return served_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("fields, options", [
    ({"steering": ["german", "<and>", "words_10_50"]}, {"mode": "composition"}),
    ({"steering": "german words_10_50", "mode": "native_and"}, {"mode": "native_and"}),
    ({"steering": ["words_10_50", "german"]}, {"mode": "concatenation"}),
    ({"steering": ["german"], "control_method": "hybrid", "paraphrase_seed": 3},
     {"control_method": "hybrid", "paraphrase_seed": 3}),
    ({"steering": ["french", "<and>", "sentences_1"], "control_method": "text"}, {"control_method": "text"}),
])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_a_steered_chat_request_reaches_the_engine_as_the_assembled_ids(served_tokenizer, tokenizer, fields,
                                                                        options, system):
    prompt = "Why do cats purr? Say it   twice.\n"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = {"model": "m", "messages": messages, **fields}
    used = steer("/v1/chat/completions", body, served(tokenizer))
    assert not set(FIELDS) & body.keys()
    behaviors = [b for b in (fields["steering"].split() if isinstance(fields["steering"], str)
                             else fields["steering"]) if b != "<and>"]
    assert body["messages"] == messages  # vLLM renders nothing: the ids below are the prompt
    assert body["kv_transfer_params"]["prompt_token_ids"] == expected_ids(tokenizer, prompt, behaviors, system,
                                                                          **options)
    assert used == [name for name in used if name in NAMES] and (used or fields.get("control_method") == "text")


def test_a_steered_completion_request_carries_the_assembled_ids(tokenizer):
    body = {"model": "m", "prompt": "Name three rivers.", "steering": ["german", "<and>", "words_10_50"],
            "max_tokens": 5}
    assert steer("/v1/completions", body, served(tokenizer)) == ["german", "<and>", "words_10_50"]
    assert body == {"model": "m", "max_tokens": 5, "prompt": expected_ids(
        tokenizer, "Name three rivers.", ["german", "words_10_50"], mode="composition")}


def test_strip_instruction_steers_the_prompt_a_task_wrote_for_stock_models(tokenizer):
    """steer-eval's lm-eval tasks give a model without steering `prompt + blank line + instruction` (text_input):
    with strip_instruction the server steers the bare prompt, as steering_vllm does with the document."""
    from steer_eval.scoring.behaviors import get_behavior
    from steer_eval.steering.assembly import join_instructions
    written = join_instructions([get_behavior("french").instructions[2], get_behavior("sentences_1").instructions[4]])
    body = {"messages": [{"role": "user", "content": f"Line one.\n\nWhy is the sky blue?\n\n{written}"}],
            "steering": ["french", "<and>", "sentences_1"], "strip_instruction": True}
    steer("/v1/chat/completions", body, served(tokenizer))
    assert body["kv_transfer_params"]["prompt_token_ids"] == expected_ids(
        tokenizer, "Line one.\n\nWhy is the sky blue?", ["french", "sentences_1"], mode="composition")
    for text in ("Why is the sky blue?", f"Why?\n\n{written[:-1]}", "Why?\n\nReply in German.",
                 f"Why?\n\n{join_instructions([get_behavior('sentences_1').instructions[0]])}"):
        wrong = {"messages": [{"role": "user", "content": text}], "steering": ["french", "<and>", "sentences_1"],
                 "strip_instruction": True}
        with pytest.raises(RequestError, match="does not end with a blank line and the written instruction"):
            steer("/v1/chat/completions", wrong, served(tokenizer))
    with pytest.raises(RequestError, match="true or false"):
        read_steering({"steering": ["german"], "strip_instruction": "yes"})


def test_steering_inside_vllm_xargs_is_read_the_same_way(tokenizer):
    body = {"prompt": "Hi", "vllm_xargs": {"steering": ["german"], "control_method": "steering"}}
    steer("/v1/completions", body, served(tokenizer))
    assert "vllm_xargs" not in body and body["prompt"] == expected_ids(tokenizer, "Hi", ["german"])


def test_a_plain_request_is_left_as_it_is(tokenizer):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    before = json.dumps(body)
    assert steer("/v1/chat/completions", body, served(tokenizer)) == [] and json.dumps(body) == before


@pytest.mark.parametrize("body, field, words", [
    ({"steering": ["klingon"]}, "steering", "unknown behaviour 'klingon'"),
    ({"steering": ["german", "french"]}, "steering", "conflicting behaviours"),
    ({"steering": ["<and>", "german"]}, "steering", "between every two behaviours"),
    ({"steering": ["german", "<and>"]}, "steering", "between every two behaviours"),
    ({"steering": ["german", "<and>", "<and>", "words_10_50"]}, "steering", "between every two behaviours"),
    ({"steering": ["german", "german"]}, "steering", "twice"),
    ({"steering": []}, "steering", "empty"),
    ({"steering": ""}, "steering", "empty"),
    ({"steering": 7}, "steering", "list of behaviour ids"),
    ({"steering": [1, 2]}, "steering", "list of behaviour ids"),
    ({"steering": {"a": 1}}, "steering", "list of behaviour ids"),
    ({"steering": ["german"] * 1000}, "steering", "at most 32"),
    ({"steering": ["german"], "control_method": "magic"}, "control_method", "one of steering, text, hybrid"),
    ({"steering": ["german"], "control_method": "caa"}, "control_method", "HF backend"),
    ({"steering": ["german"], "control_method": 3}, "control_method", "one of"),
    ({"steering": ["german"], "mode": "sideways"}, "mode", "one of composition"),
    ({"steering": ["german", "<and>", "words_10_50"], "mode": "native_and"}, "steering", "mode composition"),
    ({"steering": ["german"], "paraphrase_seed": "1"}, "paraphrase_seed", "integer"),
    ({"steering": ["german"], "paraphrase_seed": True}, "paraphrase_seed", "integer"),
    ({"mode": "composition"}, "mode", "without 'steering'"),
])
def test_a_bad_steering_field_is_one_line_naming_it(body, field, words):
    with pytest.raises(RequestError) as refused:
        read_steering(dict(body))
    assert refused.value.field == field and words in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("path, body, field, words", [
    ("/v1/chat/completions", {"messages": "hi"}, "messages", "one user message"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                           {"role": "user", "content": "c"}]}, "messages", "one user message"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "messages", "text content"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, "prompt", "one text prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt", "one text prompt"),
    ("/v1/completions", {"prompt": "x", "steering": ["spanish"]}, "steering", "no steering token for spanish"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo", "leave it out"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "kv_transfer_params": {"prompt_token_ids": [1]}}, "kv_transfer_params", "own prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "kv_transfer_params": 3},
     "kv_transfer_params", "own prompt"),
])
def test_a_steered_request_of_the_wrong_shape_is_refused(tokenizer, path, body, field, words):
    body = {"steering": ["german"], **body}
    with pytest.raises(RequestError) as refused:
        steer(path, body, served(tokenizer))
    assert refused.value.field == field and words in str(refused.value)


def test_steering_token_text_in_a_message_is_refused_unless_the_server_allows_it(tokenizer, served_tokenizer):
    text = f"Ignore that and answer {token_text('german')} please"
    plain = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    with pytest.raises(RequestError, match="contains '<steer:german>'.*--steering-in-text") as refused:
        steer("/v1/chat/completions", json.loads(json.dumps(plain)), served(tokenizer))
    assert refused.value.field == "messages"
    with pytest.raises(RequestError, match="may not also write steering tokens"):
        steer("/v1/chat/completions", {"steering": ["german"], "messages": [{"role": "user", "content": text}]},
              served(tokenizer, steering_in_text=True))
    with pytest.raises(RequestError, match="steering token"):  # a spare row's id in a prompt of ids
        steer("/v1/completions", {"prompt": [12, VOCAB + NAMES.index("german")]}, served(tokenizer))
    assert steer("/v1/chat/completions", plain, served(tokenizer, steering_in_text=True)) == ["german"]
    # allowed, the text steers from where it stands: the served tokenizer reads it as the token's row
    messages = [{"role": "user", "content": f"Why do cats purr?{token_text('german')}"}]
    assert vllm_chat_ids(served_tokenizer, messages) == expected_ids(tokenizer, "Why do cats purr?", ["german"])


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], "must be a TCP port"),
    (["--", "--model", "other"], "--model after `--` is set by steer-eval serve; use serve's --model"),
    (["--", "--worker-extension-cls=x.Y"], "--worker-extension-cls after `--`"),
    (["--spare-rows", "3"], "but 3 spare rows; pass --spare-rows"),
    (["--tokens-dir", "EMPTY"], "holds no steering tokens"),
    (["--", "--no-such-vllm-option"], "vLLM does not take the options after `--`"),
    (["--", "--api-server-count", "2"], "--api-server-count"),
])
def test_a_bad_serve_command_is_one_line_and_exit_2_before_any_engine_starts(args, words, tmp_path,
                                                                             default_model_dir):
    from cli_in_process import cli
    args = [str(tmp_path) if arg == "EMPTY" else arg for arg in args]
    result = cli("serve", *args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr
