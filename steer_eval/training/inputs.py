"""The files a trainer is handed, read so that anything wrong is one line: training data (JSON lists or JSONL of
{prompt, response, behaviors}) and settings restored from a run's manifest.

Every file read here that is missing, a directory, empty, not UTF-8, not JSON or of the wrong shape raises a
`TrainingInputError` whose message is one line naming the file, what is wrong and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

from steer_eval.errors import UserError, brief, quoted
from steer_eval.scoring.behaviors import BEHAVIORS

DATA_FIX = "make the data with trainers/build_data.py"


class TrainingInputError(UserError):
    """A file handed to a trainer (data, manifest, checkpoint) that it cannot use."""


def kind_of(value) -> str:
    return {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_input(path, fix: str) -> bytes:
    """The bytes of a file a trainer was handed, or one line saying why not."""
    path = Path(path)
    if path.is_dir():
        raise TrainingInputError(f"{path} is a directory, not a file; {fix}")
    if not path.exists():
        raise TrainingInputError(f"{path} does not exist; {fix}")
    if not path.is_file():
        raise TrainingInputError(f"{path} is not a regular file; {fix}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TrainingInputError(f"{path} cannot be read ({error.strerror}); {fix}") from None
    if not data:
        raise TrainingInputError(f"{path} is empty; {fix}")
    return data


def parse_json(path, data: bytes, fix: str, lines: bool = False):
    """A JSON document (or, with `lines`, a list of one JSON value per non-blank line), or one line saying why not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TrainingInputError(f"{path} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                                 f"{fix}") from None
    documents = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()] if lines else [(0, text)]
    values = []
    for number, document in documents:
        where = f"{path} line {number}" if lines else str(path)
        try:
            values.append(json.loads(document))
        except RecursionError:
            raise TrainingInputError(f"{where} nests JSON too deeply to be a record; {fix}") from None
        except ValueError as error:  # JSONDecodeError, and numbers too long to convert
            raise TrainingInputError(f"{where} is not valid JSON ({brief(error, 120)}); {fix}") from None
    return values if lines else values[0]



# ----------------------------------------------------------------------------- training data

def check_record(row, where: str, stage: str | None) -> dict:
    """One training record {prompt: str, response: str, behaviors: [known ids]}, checked for the stage if given."""
    if not isinstance(row, dict):
        raise TrainingInputError(f"{where} is {kind_of(row)}, not a record (every record needs prompt, response and "
                                 f"behaviors); {DATA_FIX}")
    missing = [key for key in ("prompt", "response", "behaviors") if key not in row]
    if missing:
        raise TrainingInputError(f"{where} has no {', '.join(missing)} (every record needs prompt, response and "
                                 f"behaviors); {DATA_FIX}")
    for key in ("prompt", "response"):
        if not isinstance(row[key], str):
            raise TrainingInputError(f"{where}: {key} is {kind_of(row[key])}, not a string; {DATA_FIX}")
    behaviors = row["behaviors"]
    if not isinstance(behaviors, list) or not behaviors or not all(isinstance(b, str) for b in behaviors):
        raise TrainingInputError(f"{where}: behaviors is {quoted(behaviors, 60)}, not a non-empty list of behaviour "
                                 f"ids; {DATA_FIX}")
    for behavior in behaviors:
        if behavior not in BEHAVIORS:
            raise TrainingInputError(f"{where}: unknown behaviour {quoted(behavior, 60)}; known behaviours: "
                                     f"{', '.join(BEHAVIORS)}")
    if stage is not None and (stage == "and") != (len(behaviors) > 1):
        raise TrainingInputError(f"{where}: stage {stage} got a record with behaviours {behaviors}; stage behaviour "
                                 "takes single-behaviour files, stage and takes pair files")
    if stage == "and" and any(BEHAVIORS[b].unseen for b in behaviors):
        raise TrainingInputError(f"{where}: <and> is trained on seen behaviours only, but the record holds "
                                 f"{behaviors}; held-out (unseen) behaviours measure zero-shot composition")
    return row


def read_training_data(paths, stage: str | None = None) -> tuple[list[dict], list[list[str]]]:
    """(records, [[path, sha256 of its bytes], ...]) of JSON lists or JSONL files of {prompt, response, behaviors}."""
    records, digests = [], []
    for path in paths:
        data = read_input(path, DATA_FIX)
        digests.append([str(path), hashlib.sha256(data).hexdigest()])
        if str(path).endswith(".jsonl"):
            rows = parse_json(path, data, DATA_FIX, lines=True)
            places = [f"{path} line {n}" for n, line in
                      enumerate(data.decode("utf-8").splitlines(), 1) if line.strip()]
        else:
            rows = parse_json(path, data, DATA_FIX)
            if not isinstance(rows, list):
                raise TrainingInputError(f"{path} holds {kind_of(rows)}, not a list of records (every record needs "
                                         f"prompt, response and behaviors); {DATA_FIX}")
            places = [f"{path} record {n}" for n in range(1, len(rows) + 1)]
        if not rows:
            raise TrainingInputError(f"{path} holds no records; {DATA_FIX}")
        records.extend(check_record(row, where, stage) for row, where in zip(rows, places))
    return records, digests



# ----------------------------------------------------------------------------- settings restored from a file

def restore_config(cls, saved, source) -> object:
    """An instance of the dataclass `cls` from a dict read from `source`, every field's type checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(saved, dict):
        raise TrainingInputError(f"{source}: the settings are {kind_of(saved)}, not a JSON object; --restart to start "
                                 "over")
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise TrainingInputError(f"{source} was written by another version of this trainer (settings "
                                 f"{', '.join(name[:40] for name in unknown[:5])}); resume it with that version, "
                                 "or --restart")
    for name, value in saved.items():
        kind = fields[name].type
        allowed = {float: (int, float), typing.Optional[str]: (str, type(None))}.get(kind, kind)
        if (not isinstance(value, allowed) or (isinstance(value, bool) and kind in (int, float))
                or (kind is list and not all(isinstance(item, str) for item in value))):
            expected = "list of strings" if kind is list else getattr(kind, "__name__", str(kind))
            raise TrainingInputError(f"{source}: setting {name} is {quoted(value, 40)}, not a {expected}; restore the "
                                     "file, or --restart")
    return cls(**saved)
