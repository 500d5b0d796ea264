"""Chat-template options (Qwen3's enable_thinking) as a run setting, and reasoning blocks kept but never judged."""
import json
import shutil

import pytest

from steer_eval.cli import main as cli
from steer_eval.steering.assembly import assemble
from steer_eval.backends.hf import HFBackend
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.errors import RunMismatchError, SettingError
from steer_eval.backends.generation import GenerationConfig, chat_template_options, split_reasoning
from steer_eval.runs.records import Request, read_records
from steer_eval.runs.runner import run
from steer_eval.runs.workers import evaluate

# Qwen3's switch, reduced to what matters: thinking off puts an empty reasoning block into the prompt.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
OFF = {"enable_thinking": False}


@pytest.fixture(scope="module")
def thinking_model(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking") / "tiny-thinking"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": THINKING_TEMPLATE}))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def test_the_options_reach_the_template_and_the_slot_stays_in_the_user_turn(thinking_model):
    backend = HFBackend(str(thinking_model), chat_template_kwargs=OFF)
    off = backend.assemble("Why is the sky blue?", ["german"])
    on = assemble("Why is the sky blue?", ["german"], backend.tokenizer)
    text = backend.tokenizer.decode(off.input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<think>" not in backend.tokenizer.decode(on.input_ids)
    assert off.input_ids[:off.slots[0][0]] == on.input_ids[:on.slots[0][0]]  # the slot right after the prompt
    assert backend.tokenizer.decode(off.input_ids[off.slots[0][0] + 1:]).startswith("<|im_end|>")


def test_the_options_are_part_of_the_run_identity(thinking_model, tmp_path):
    output = tmp_path / "records.jsonl"
    requests = [Request("0", "Why is the sky blue?", ("german",), "text")]
    config = GenerationConfig(max_new_tokens=3)
    spec = BackendSpec("hf", str(thinking_model), options={"chat_template_kwargs": OFF})
    run(requests, spec, config, output, progress=False)
    with pytest.raises(RunMismatchError, match=r"chat template options: \{'enable_thinking': False\} in the folder"):
        run(requests, BackendSpec("hf", str(thinking_model)), config, output, progress=False)


def test_the_command_line_takes_a_json_object(thinking_model, tmp_path, capsys):
    assert cli.main(["infer", "--model_path", str(thinking_model), "--steering", "german", "--control-method",
                     "text", "--limit", "1", "--max-new-tokens", "2", "--silent", "--output",
                     str(tmp_path / "r.jsonl"), "--chat-template-kwargs", '{"enable_thinking": false}']) == 0
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["identity"]["chat_template"] == OFF
    assert cli.main(["infer", "--model_path", str(thinking_model), "--steering", "german", "--limit", "1",
                     "--chat-template-kwargs", "enable_thinking=false"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("given, expected", [(None, {}), ('{"enable_thinking": false}', OFF), ({"a": 1}, {"a": 1})])
def test_chat_template_options(given, expected):
    assert chat_template_options(given) == expected
    assert chat_template_options(given, "False") == {**expected, "enable_thinking": False}


@pytest.mark.parametrize("bad", ["[1]", "{", "3"])
def test_chat_template_options_refuse_what_is_no_object(bad):
    with pytest.raises(SettingError, match="JSON object"):
        chat_template_options(bad)


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<think>\nplan it\n</think>\n\nDas ist gut.", "plan it", "Das ist gut."),
    ("plan it</think>Das ist gut.", "plan it", "Das ist gut."),  # the template opened the block in the prompt
    ("<think>\n\n</think>\n\nDas ist gut.", "", "Das ist gut."),  # thinking off: an empty block
    ("<think>never closed because the limit", "never closed because the limit", ""),
    ("Das ist gut.", None, "Das ist gut."),
])
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_a_reasoning_block_is_kept_but_never_judged(tiny_hf, monkeypatch, tmp_path):
    english_plan = "<think>The user wants German. I will answer in German with a short sentence.</think>\n\n"
    answer = "Der Himmel ist blau, weil das Sonnenlicht in der Luft gestreut wird."
    monkeypatch.setattr(tiny_hf, "generate", lambda prompts, config, progress: [english_plan + answer] * len(prompts))
    [record] = evaluate(tiny_hf, [Request("0", "Why is the sky blue?", ("german", "words_10_50"), "text")],
                        GenerationConfig(max_new_tokens=64))
    assert record.response == answer and record.reasoning.startswith("The user wants German")
    assert record.per_behavior == {"german": True, "words_10_50": True}
    assert record.quality["words"] == len(answer.split())
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record.to_json()) + "\n")
    assert list(read_records(path)) == [record]
