import json
import re

import pytest

from steer_eval.scoring.prompts import PromptFileError, bundled_prompts, load_prompt_file, load_prompts

INSTRUCTION_WORDS = re.compile(r"german|spanish|french|italian|portuguese|sentence|\bwords\b|bullet|json|"
                               r"uppercase|lowercase|capital letters|title case|briefly|step by step", re.I)


def test_bundled_set_size_and_disjoint_splits():
    prompts = bundled_prompts()
    assert len(prompts) >= 600
    by_split = {s: {p.prompt for p in bundled_prompts(s)} for s in ("train", "val", "test", "new_topics")}
    assert sum(len(v) for v in by_split.values()) == len(prompts) == len({p.prompt for p in prompts})
    assert len({p.id for p in prompts}) == len(prompts)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    assert len(by_split["test"]) >= 150 and len(by_split["train"]) >= 300
    topics = {s: {p.topic for p in bundled_prompts(s)} for s in ("train", "val", "test", "new_topics")}
    assert len(topics["test"]) >= 20 and topics["val"] == topics["test"] and topics["test"] < topics["train"]
    assert len(topics["new_topics"]) >= 20 and not topics["new_topics"] & topics["train"]
    assert all(sum(p.topic == t for p in bundled_prompts("new_topics")) >= 10 for t in topics["new_topics"])


def test_bundled_prompts_carry_no_instruction_of_their_own():
    offenders = [p.prompt for p in bundled_prompts() if INSTRUCTION_WORDS.search(p.prompt)]
    assert offenders == []


def test_user_files_json_and_jsonl(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"id": "a", "prompt": "Why is the sky blue?"}\n{"instruction": "Tell me a joke"}\n')
    assert [(p.id, p.prompt) for p in load_prompt_file(jsonl)] == [("a", "Why is the sky blue?"), ("1", "Tell me a joke")]
    plain = tmp_path / "mine.json"
    plain.write_text(json.dumps(["Hello?", {"messages": [{"role": "user", "content": "Hi there"}]}]))
    assert [p.prompt for p in load_prompts(str(plain))] == ["Hello?", "Hi there"]


@pytest.mark.parametrize("content, message", [
    ("[]", "non-empty list"),
    ("{not json", "not valid JSON"),
    ('[{"answer": 3}]', "no prompt found"),
])
def test_bad_prompt_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        load_prompt_file(path)


def test_missing_file():
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts("/nonexistent/prompts.json")
