"""Fluency under the unsteered model: how likely the base model finds each response to the plain prompt.

The score of a record is the mean log-probability per token of its response, given the prompt alone (chat
template, no steering token, no instruction), under the base model through a backend's `loglikelihood`. Word
salad and repetition loops that pass a verifier score far below the model's own answers. Scores go to a sidecar
file beside the records (one JSON line per record key, appended and flushed per batch), so an interrupted pass
resumes where it stopped and the records file itself is never rewritten.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import orjson
from tqdm.auto import tqdm

from steer_eval.errors import UserError
from steer_eval.records import Record, iter_records

# Not ".jsonl": a folder of records is read as every *.jsonl in it, and scores are no records.
SIDECAR_SUFFIX = ".fluency"


def sidecar_path(source: str | Path) -> Path:
    """`records.jsonl` -> `records.fluency` (JSON lines); a grid's folder -> the one of its `records.jsonl`."""
    source = Path(source)
    if source.is_dir():
        return source / ("records" + SIDECAR_SUFFIX)
    if source.name.endswith(".tar.gz"):
        return source.with_name(source.name.removesuffix(".tar.gz") + SIDECAR_SUFFIX)
    return source.with_name(source.stem + SIDECAR_SUFFIX)


def _rows(path: Path) -> Iterator[dict]:
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut short by a crash; its record is scored again
            if isinstance(row, dict) and "key" in row:
                yield row


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1)


def read_scores(path: str | Path) -> dict[str, float | None]:
    """Record key -> mean log-probability per token (None for an empty response)."""
    return {row["key"]: row.get("fluency") for row in _rows(Path(path))}


def with_fluency(records: Iterable[Record], scores: dict[str, float]) -> Iterator[Record]:
    """Records with `quality["fluency"]` filled in from `scores` where a score exists."""
    for record in records:
        score = scores.get(record.key)
        yield record if score is None else replace(record, quality={**record.quality, "fluency": score})


def score_records(source: str | Path, backend, output: str | Path | None = None, batch_size: int = 32,
                  progress: bool = True) -> Path:
    """Score every record of `source` not yet in the sidecar `output` (default: `sidecar_path(source)`)."""
    output = Path(output) if output else sidecar_path(source)
    scorer = backend.fingerprint  # the base model's weights and dtype: scores of two models never mix
    stored = list(_rows(output))
    other = next((row.get("scorer") for row in stored if row.get("scorer") != scorer), None)
    if other is not None:
        raise UserError(f"{output} holds fluency scores of another model ({other}, now {scorer}); give another "
                        "--output, or move it away to score again")
    done = {row["key"] for row in stored}
    todo = [record for record in iter_records(source) if record.key not in done]
    if not todo and not done:
        raise UserError(f"no records in {source}; give a records JSONL file, a folder of them or a .tar.gz")
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as sink, tqdm(total=len(todo), desc="fluency", unit="record", disable=not progress) as bar:
        if sink.tell() and _last_byte(output) != b"\n":
            sink.write(b"\n")  # end a line a crash cut short, so the next score starts a line of its own
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            plain = [backend.assemble(record.request.prompt, [], control_method="text") for record in batch]
            totals = backend.loglikelihood(list(zip(plain, [r.response for r in batch])), progress=False)
            for record, (total, _) in zip(batch, totals):
                tokens = len(backend.tokenizer(record.response, add_special_tokens=False)["input_ids"])
                fluency = total / tokens if tokens else None
                sink.write(orjson.dumps({"key": record.key, "fluency": fluency, "tokens": tokens,
                                         "scorer": scorer}) + b"\n")
            sink.flush()
            bar.update(len(batch))
    return output
