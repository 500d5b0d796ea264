"""Fluency under the unsteered model: how likely the base model finds each response to the plain prompt.

The score of a record is the mean log-probability per token of its response, given the prompt alone (chat
template, no steering token, no instruction), under the base model through a backend's `loglikelihood`. Word
salad and repetition loops that pass a verifier score far below the model's own answers. Scores go to a sidecar
file beside the records (one JSON line per record key, appended and flushed per batch), so an interrupted pass
resumes where it stopped and the records file itself is never rewritten. Every score row names the run id of the
record it scored: scores are applied only to records of that run, and a sidecar holding another run's scores
(left behind by hand, or copied) is refused rather than shown next to records it never scored.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from steer_eval.errors import UserError
from steer_eval.runs.records import Record, append_records, iter_records, read_rows
from steer_eval.runs.identity import FLUENCY_SUFFIX, check_sidecar_run, records_stem


def sidecar_path(source: str | Path) -> Path:
    """`records.jsonl` -> `records.fluency` (JSON lines); a grid's folder -> the one of its `records.jsonl`."""
    source = Path(source)
    if source.is_dir():
        return source / ("records" + FLUENCY_SUFFIX)
    return source.with_name(records_stem(source) + FLUENCY_SUFFIX)


def _rows(path: Path) -> Iterator[dict]:
    """The sidecar's score rows, by the records' crash rule (a last line cut short is ignored and scored again;
    damage anywhere else, or a folder in its place, is an error naming the file)."""
    for number, row in enumerate(read_rows(path), start=1):
        if not isinstance(row.get("key"), str):
            raise UserError(f"{path}: row {number} is not a fluency score (no record key); move the file away and "
                            "run `steer-eval score` again")
        yield row


def read_scores(path: str | Path) -> dict[tuple[str, str], float | None]:
    """(run id, record key) -> mean log-probability per token (None for an empty response)."""
    return {(str(row.get("run")), row["key"]): row.get("fluency") for row in _rows(Path(path))}


def with_fluency(records: Iterable[Record], scores: dict[tuple[str, str], float | None],
                 sidecar: Path) -> Iterator[Record]:
    """Records with `quality["fluency"]` filled in from `scores` where a score of their run exists; once the
    records are read, refuses a sidecar that holds scores of runs none of them belongs to."""
    runs = set()
    for record in records:
        runs.add(record.run)
        score = scores.get((record.run, record.key))
        yield record if score is None else replace(record, quality={**record.quality, "fluency": score})
    check_sidecar_run(sidecar, {run for run, _ in scores}, runs)


@dataclass(frozen=True)
class FluencyPlan:
    output: Path  # the sidecar
    todo: list[Record]  # records not scored yet
    stored: list[dict]  # the sidecar's rows


def plan_scores(source: str | Path, output: str | Path | None = None) -> FluencyPlan:
    """What `score_records` would score, checked before any model loads: no records, or scores of another run in
    the sidecar `output` (default: `sidecar_path(source)`), are refused."""
    output = Path(output) if output else sidecar_path(source)
    stored = list(_rows(output))
    records = list(iter_records(source))
    if not records:
        raise UserError(f"no records in {source}; give a records JSONL file, a folder of them or a .tar.gz")
    check_sidecar_run(output, {str(row.get("run")) for row in stored}, {record.run for record in records})
    done = {(row.get("run"), row["key"]) for row in stored}
    return FluencyPlan(output, [record for record in records if (record.run, record.key) not in done], stored)


def score_records(source: str | Path, backend, output: str | Path | None = None, batch_size: int = 32,
                  progress: bool = True, plan: FluencyPlan | None = None) -> Path:
    """Score every record of `source` not yet in the sidecar `output` (or those of a `plan_scores` plan)."""
    plan = plan or plan_scores(source, output)
    output, todo = plan.output, plan.todo
    scorer = backend.fingerprint  # the base model's weights and dtype: scores of two models never mix
    other = next((row.get("scorer") for row in plan.stored if row.get("scorer") != scorer), None)
    if other is not None:
        raise UserError(f"{output} holds fluency scores of another model ({other}, now {scorer}); give another "
                        "--output, or move it away to score again")
    with tqdm(total=len(todo), desc="fluency", unit="record", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            plain = [backend.assemble(record.request.prompt, [], control_method="text") for record in batch]
            totals = backend.loglikelihood(list(zip(plain, [r.response for r in batch])), progress=False)
            rows = []
            for record, (total, _) in zip(batch, totals):
                tokens = len(backend.tokenizer(record.response, add_special_tokens=False)["input_ids"])
                rows.append({"key": record.key, "run": record.run, "fluency": total / tokens if tokens else None,
                             "tokens": tokens, "scorer": scorer})
            append_records(output, rows)
            bar.update(len(batch))
    return output
