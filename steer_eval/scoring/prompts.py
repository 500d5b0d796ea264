"""The bundled prompt set (fixed train/val/test splits) and user prompt files (JSON or JSONL)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from steer_eval.errors import UserError

SPLITS = ("train", "val", "test", "new_topics")
_PROMPT_KEYS = ("prompt", "instruction", "question", "input", "text")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    topic: str = ""
    split: str = ""


class PromptFileError(UserError, ValueError):
    """A user-facing problem reading a prompt file."""


def bundled_prompts(split: str | None = None) -> list[Prompt]:
    """The bundled prompts; `split` in train|val|test|new_topics. train, val and test share 31 topics (test feeds the
    lm-eval tasks and is never trained on); train's first 400 prompts are those 31 topics, the 720 after them 60
    further topics; new_topics holds 20 topics found in no other split, to measure what training carries over to
    subjects it never saw."""
    if split is not None and split not in SPLITS:
        raise PromptFileError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    lines = resources.files("steer_eval.data").joinpath("prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [Prompt(**json.loads(line)) for line in lines if line.strip()]
    return [p for p in prompts if split is None or p.split == split]


def _record_prompt(record, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in _PROMPT_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
        messages = record.get("messages")
        if isinstance(messages, list):
            user_turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if user_turns and isinstance(user_turns[0], str):
                return user_turns[0]
    raise PromptFileError(f"{where}: no prompt found; each record needs one of the keys "
                          f"{', '.join(_PROMPT_KEYS)} (or 'messages' with a user turn), or be a plain string")


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts from a JSON list or a JSONL file; a record keeps its `id` when it has one."""
    path = Path(path)
    if path.is_dir():
        raise PromptFileError(f"prompt file {path} is a directory; give a JSON or JSONL file of prompts")
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist" if not path.exists() else
                              f"prompt file {path} is not a regular file; give a JSON or JSONL file of prompts")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise PromptFileError(f"{path} is not UTF-8 text (byte {error.start}); give a JSON or JSONL file of "
                              "prompts") from None
    except OSError as error:
        raise PromptFileError(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise PromptFileError(f"{path} is not valid {'JSONL' if path.suffix == '.jsonl' else 'JSON'}: "
                              f"{str(error)[:200]}") from None
    if isinstance(records, dict):
        records = records.get("data", records.get("prompts"))
    if not isinstance(records, list) or not records:
        raise PromptFileError(f"{path} must hold a non-empty list of prompts (JSON list or one object per line)")
    prompts = []
    for index, record in enumerate(records):
        prompt = _record_prompt(record, f"{path} record {index}")
        record_id = str(record.get("id", index)) if isinstance(record, dict) else str(index)
        prompts.append(Prompt(record_id, prompt, split=path.stem))
    return prompts


def load_prompts(source: str | None = None, split: str | None = "test") -> list[Prompt]:
    """`source` None or 'bundled' reads the bundled set (the given split); anything else is a file path."""
    if source in (None, "bundled"):
        return bundled_prompts(split)
    return load_prompt_file(source)
