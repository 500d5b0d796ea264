"""The one record format: a typed `Request` (one evaluation to run), a typed `Record` (its result), JSONL IO.

Every path that produces results (grid, infer, token evaluation, teacher data) writes `Record`s through
`append_records`, and every reader goes through `read_rows`/`read_records`. Every other JSONL file of the package
(fluency sidecars, the LLM judge's cache, trainers' logs) goes through `append_rows`/`read_rows` too, under one crash
rule: a file is append-only; a crash can leave its last line cut short, which readers report and ignore and the next
append removes. A broken line anywhere else is an error naming the file and line: rows are never dropped silently.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import jsonlines
import orjson

from steer_eval.errors import RecordFileError, brief
from steer_eval.scoring.verdict import SCORER_NAME, SCORER_VERSION, scorer_spec, verify

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One evaluation: a prompt, the behaviours in the order given to the model, and how they are conveyed."""
    prompt_id: str
    prompt: str
    behaviors: tuple[str, ...]
    control_method: str = "steering"
    mode: str = "composition"
    sample: int = 0  # several generations of one prompt (teacher data); shifts the sampling seed
    paraphrase_seed: int = 0  # picks the instruction paraphrases in text and hybrid control

    def __post_init__(self):
        object.__setattr__(self, "behaviors", tuple(self.behaviors))
        # Computed once: the runner hashes every key of a million-request plan twice.
        object.__setattr__(self, "_key", orjson.dumps([self.control_method, self.mode, list(self.behaviors),
                                                       self.prompt_id, self.sample, self.paraphrase_seed]).decode())

    @property
    def key(self) -> str:
        """Stable identity within a run: everything that distinguishes this evaluation except the prompt text."""
        return self._key

    def to_json(self) -> dict:
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "behaviors": list(self.behaviors),
                "control_method": self.control_method, "mode": self.mode, "sample": self.sample,
                "paraphrase_seed": self.paraphrase_seed}

    @classmethod
    def from_json(cls, row: Mapping) -> "Request":
        """Raises RecordShapeError naming the field when `row` is not a request (or a record)."""
        if not isinstance(row, Mapping):
            raise RecordShapeError(f"a {type(row).__name__}, not a JSON object")
        # "id" is how records written before this format named the prompt.
        prompt_id = row["prompt_id"] if "prompt_id" in row else row.get("id")
        behaviors = row.get("behaviors")
        if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool):
            raise RecordShapeError("no prompt_id (a string)")
        if not isinstance(behaviors, list) or not all(isinstance(b, str) for b in behaviors):
            raise RecordShapeError("behaviors must be a list of behaviour ids")
        for name, kind in (("prompt", str), ("control_method", str), ("mode", str), ("sample", int),
                           ("paraphrase_seed", int)):
            if (name == "prompt" or name in row) and (type(row.get(name)) is not kind):
                raise RecordShapeError(f"{name} must be a {kind.__name__}, got {type(row.get(name)).__name__}")
        return cls(str(prompt_id), row["prompt"], tuple(behaviors), row.get("control_method", "steering"),
                   row.get("mode", "composition"), row.get("sample", 0), row.get("paraphrase_seed", 0))


class RecordShapeError(RecordFileError):
    """A JSON object that is not a steer-eval request or record; the message names the field."""


@dataclass(frozen=True)
class Record:
    """A request with its response and verdicts, and everything needed to regenerate or re-judge it."""
    request: Request
    response: str
    per_behavior: dict[str, bool]  # the verifier verdict of each behaviour
    scorer: dict  # which verifiers with which parameters (scoring.scorer_spec)
    generation: dict  # GenerationConfig.as_dict() as used for this request
    steering: tuple[str, ...] = ()  # steering-token names at the slots, in order
    instruction: str | None = None  # the instruction text the model read, if any
    backend: str = ""
    model: str = ""
    run: str = ""  # the run id (run_identity.RunIdentity.run_id) of the settings that produced it
    quality: dict = field(default_factory=dict)  # quality.measure of the response (repetition, tokens, ...)
    extra: dict = field(default_factory=dict)  # fields of other writers, kept so a round trip loses nothing
    reasoning: str | None = None  # a reasoning model's <think> block, kept but never judged (`response` is the answer)

    def __post_init__(self):
        object.__setattr__(self, "steering", tuple(self.steering))

    @property
    def followed(self) -> bool:
        """A composition is followed only when every behaviour's verifier holds."""
        return all(self.per_behavior.values())

    @property
    def key(self) -> str:
        return self.request.key

    # Flat attribute access for analysis code that reads requests and records alike.
    @property
    def behaviors(self) -> tuple[str, ...]:
        return self.request.behaviors

    @property
    def prompt_id(self) -> str:
        return self.request.prompt_id

    @property
    def control_method(self) -> str:
        return self.request.control_method

    @property
    def mode(self) -> str:
        return self.request.mode

    def to_json(self) -> dict:
        return {**self.extra, **self.request.to_json(), "steering": list(self.steering),
                "instruction": self.instruction, "response": self.response, "followed": self.followed,
                "per_behavior": dict(self.per_behavior), "scorer": self.scorer, "generation": self.generation,
                "backend": self.backend, "model": self.model, "run": self.run, "quality": self.quality,
                **({"reasoning": self.reasoning} if self.reasoning is not None else {})}

    @classmethod
    def from_json(cls, row: Mapping) -> "Record":
        """Also reads records written before this format; one stored without verdicts is judged here."""
        request = Request.from_json(row)
        per_behavior = row.get("per_behavior")
        scorer = row.get("scorer")
        if not isinstance(row.get("response"), str):
            raise RecordShapeError("no response (a string)")
        if row.get("reasoning") is not None and not isinstance(row["reasoning"], str):
            raise RecordShapeError("reasoning must be a string")
        for name, kind in (("scorer", dict), ("generation", dict), ("quality", dict), ("steering", list)):
            if row.get(name) is not None and not isinstance(row[name], kind):
                raise RecordShapeError(f"{name} must be a JSON {'object' if kind is dict else 'list'}")
        if not isinstance(per_behavior, Mapping):
            per_behavior, scorer = verify(request.behaviors, row["response"]).per_behavior, None
        return cls(request, row["response"], {b: bool(v) for b, v in per_behavior.items()},
                   scorer or scorer_spec(request.behaviors), dict(row.get("generation") or {}),
                   tuple(row.get("steering") or ()), row.get("instruction"), row.get("backend", ""),
                   row.get("model", ""), row.get("run", ""), dict(row.get("quality") or {}),
                   {k: v for k, v in row.items() if k not in _RECORD_FIELDS}, row.get("reasoning"))


def judged_by_verifiers(record: Record) -> bool:
    """A real model's response judged by steer-eval's verifiers (of any version), not a simulated one."""
    return record.scorer.get("scorer") in (None, SCORER_NAME)


def judged_by_older_verifiers(record: Record) -> bool:
    return record.scorer.get("scorer") == SCORER_NAME and record.scorer.get("version") != SCORER_VERSION


def rejudge(record: Record) -> Record:
    """The record judged again by this checkout's verifiers (its response and behaviours are all they need)."""
    if not judged_by_verifiers(record):
        raise RecordFileError(f"record {record.key} was judged by {record.scorer.get('scorer')} (simulated "
                              "responses), which has nothing to re-judge; re-judge records of a real model")
    return replace(record, per_behavior=verify(record.behaviors, record.response).per_behavior,
                   scorer=scorer_spec(record.behaviors))


_RECORD_FIELDS = frozenset({"id", "prompt_id", "prompt", "behaviors", "control_method", "mode", "sample",
                            "paraphrase_seed", "steering", "instruction", "response", "followed", "per_behavior",
                            "scorer", "generation", "backend", "model", "run", "quality", "reasoning"})


# --- JSONL files ------------------------------------------------------------------------------------------------

def _complete_lines(lines: Iterable[bytes], source: str) -> Iterator[str]:
    """Lines that were written whole; a last line without its newline is kept, ignored or an error (`_last_line`)."""
    for number, line in enumerate(lines, start=1):
        if line.endswith(b"\n"):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordFileError(f"{source} line {number} is not UTF-8 text; the file is damaged: "
                                      "remove that line or write the records to a new folder") from None
            continue
        whole = _last_line(line)
        if whole is None:
            raise _damaged(source, number)
        if whole:
            yield line.decode("utf-8")
        else:
            logger.warning(f"{source}: the last line (line {number}) was cut short, probably by a crash while "
                           "writing; it is ignored and what it held is written again")


def _last_line(line: bytes) -> bool | None:
    """The crash rule for a last line without its newline: True when it is a whole JSON object (kept), False when
    it is the start of one cut short by a crash (dropped), None when it is neither (the file is damaged)."""
    try:
        if isinstance(json.loads(line.decode("utf-8")), dict):
            return True
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return False if _cut_short(line) else None


def _damaged(source: str, number: int) -> RecordFileError:
    return RecordFileError(f"{source} line {number} is not a JSON record (nor one cut short by a crash); give a "
                           "file written by steer-eval, or remove that line")


def _cut_short(line: bytes) -> bool:
    """Could this be the start of a line steer-eval wrote (a JSON object in UTF-8, cut anywhere, even inside a
    character)? Random bytes or another file's text are not."""
    if not line.lstrip().startswith(b"{"):
        return False
    for end in range(len(line), max(len(line) - 4, 0), -1):
        try:
            line[:end].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def parse_lines(lines: Iterable[bytes], source: str) -> Iterator[dict]:
    """JSON objects, one per line; blank lines skipped; a damaged line other than a cut-short last one is an error."""
    reader = jsonlines.Reader(_complete_lines(lines, source), loads=orjson.loads)
    try:
        yield from reader.iter(type=dict, skip_empty=True)
    except jsonlines.InvalidLineError as error:
        raise RecordFileError(f"{source} line {error.lineno} is not a JSON record ({error}); the file is damaged: "
                              "remove that line or write the records to a new folder") from None


def read_rows(path: str | Path) -> Iterator[dict]:
    """Rows of one JSONL file, streamed (nothing if it does not exist; anything but a file there is an error)."""
    path = Path(path)
    if not _is_jsonl_file(path):
        return
    try:
        handle = path.open("rb")
    except OSError as error:
        raise RecordFileError(f"cannot read {path}: {error.strerror}; give a readable records file") from None
    with handle:
        yield from parse_lines(handle, str(path))


def _is_jsonl_file(path: Path) -> bool:
    """Whether a file is there (False: nothing is); anything but a regular file is an error."""
    if not path.exists():
        return False
    if not path.is_file():
        raise RecordFileError(f"{path} is {'a folder' if path.is_dir() else 'not a regular file'} where a JSONL "
                              "file belongs; move it away")
    return True


def parse_record(row: dict, source: str, number: int) -> Record:
    """Row `number` (counting records, from 1) of `source` as a Record; one clear error if it is not one."""
    try:
        return Record.from_json(row)
    except (RecordShapeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise RecordFileError(f"{source}: record {number} is not a steer-eval record ({error}); give a records "
                              "file written by steer-eval grid/infer, or remove that line") from None


def read_records(path: str | Path) -> Iterator[Record]:
    for number, row in enumerate(read_rows(path), start=1):
        yield parse_record(row, str(path), number)


def iter_records(source: str | Path) -> Iterator[Record]:
    """Records streamed from a JSONL file, a folder of them (a grid's output), or a .tar.gz of JSONL files."""
    source = Path(source)
    if source.is_dir():
        for file in sorted(source.glob("*.jsonl")):
            yield from read_records(file)
    elif source.name.endswith(".tar.gz") and source.is_file():
        for name, data in _archive_members(source):
            yield from (parse_record(row, name, n) for n, row in enumerate(parse_lines(io.BytesIO(data), name), 1))
    elif not source.exists():
        raise RecordFileError(f"{source} does not exist; give a records JSONL file, a folder of them or a .tar.gz")
    elif not source.is_file():
        raise RecordFileError(f"{source} is not a regular file; give a records JSONL file, a folder of them or a "
                              ".tar.gz")
    else:
        yield from read_records(source)


def _archive_members(source: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each .jsonl member of a .tar.gz, one at a time; a damaged archive is one clear error."""
    def damaged(error: BaseException) -> RecordFileError:
        return RecordFileError(f"{source} is not a readable .tar.gz of records ({brief(error)}); give a records "
                               "JSONL file, a folder of them or an intact .tar.gz")
    try:
        archive = tarfile.open(source)
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(".jsonl")),
                         key=lambda m: m.name)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise damaged(error) from None
    with archive:
        for member in members:
            try:
                data = archive.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError) as error:
                raise damaged(error) from None
            yield f"{source}:{member.name}", data


def load_records(source: str | Path) -> list[Record]:
    return list(iter_records(source))


def repair_tail(path: Path) -> None:
    """Before appending: drop a last line cut short by a crash (or end a whole one with its newline); a last line
    that is neither is an error naming it (`_last_line`)."""
    if not _is_jsonl_file(path) or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        # Find the start of the last line without reading the whole file.
        end = handle.seek(0, os.SEEK_END)
        position, tail = end, b""
        while position > 0 and b"\n" not in tail:
            step = min(1 << 16, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
        start = position + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        handle.seek(start)
        last = handle.read()
        whole = _last_line(last)
        if whole is None:
            handle.seek(0)
            raise _damaged(str(path), handle.read(start).count(b"\n") + 1)
        if whole:
            handle.write(b"\n")
        else:
            logger.warning(f"{path}: removed a last line cut short by a crash ({len(last)} bytes); what it held "
                           "is written again")
            handle.truncate(start)


def encode_records(records: Iterable[Record | Mapping]) -> bytes:
    """JSONL lines of these records (how workers hand results to the writer: bytes travel cheaply)."""
    buffer = io.BytesIO()
    # orjson: compact UTF-8 lines, ~15x faster than json.dumps (benchmarks/grid_scale.py).
    with jsonlines.Writer(buffer, dumps=orjson.dumps) as writer:
        writer.write_all(r.to_json() if isinstance(r, Record) else dict(r) for r in records)
    return buffer.getvalue()


def decode_records(data: bytes, source: str = "worker output") -> list[Record]:
    return [Record.from_json(row) for row in parse_lines(io.BytesIO(data), source)]


def append_rows(path: str | Path, rows: Iterable[Mapping] | bytes) -> None:
    """Append whole JSONL lines (rows, or lines already encoded) and flush them to disk, so a crash loses at most
    the rows not yet written; a last line a crash cut short is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    with path.open("ab") as handle:
        handle.write(rows if isinstance(rows, bytes) else encode_records(rows))
        handle.flush()
        os.fsync(handle.fileno())


def append_records(path: str | Path, records: Sequence[Record | Mapping] | bytes) -> None:
    append_rows(path, records)
