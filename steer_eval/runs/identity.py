"""Run identity: what a records file's numbers depend on, kept in a manifest next to it.

Before the first record is written, `<records>.manifest.json` states the model (its name, a fingerprint of
every file that makes it answer as it does — all weights, config, tokenizer, chat template — and, once loaded,
its input-embedding fingerprint and engine dtype), the backend and dtype, the generation settings, the scorer
version and the fingerprint of every steering token the records use. A later run into the same file must agree
on all of it (new tokens may be added, e.g. when a grid grows), or it is refused before any model loads:
records of two runs are never mixed. Every record carries the manifest's run id, and so does every row of the
files scored from them (`score`'s `.fluency`, `judge`'s folder): these sidecars belong to the run and move
aside with it on --restart. One writer at a time holds the file's lock.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from steer_eval import __version__
from steer_eval.errors import RunMismatchError, UserError, brief

# 2: the identity covers every model file (`weights`); version 1 covered the input embeddings only.
MANIFEST_VERSION = 2
FLUENCY_SUFFIX = ".fluency"  # `steer-eval score`: <records stem>.fluency (not .jsonl: a folder reads *.jsonl)
JUDGE_SUFFIX, FOLDER_JUDGE = ".judge", "judge"  # `steer-eval judge FILE`: <stem>.judge/; `judge FOLDER`: judge/
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    model: str  # the model's label (embedded name's folder, HF id or folder name)
    backend: str  # hf | vllm
    dtype: str  # as asked ("auto" resolves per machine; the resolved one is part of `model_fingerprint`)
    generation: dict
    scorer: dict  # {"scorer": ..., "version": ...}
    tokens: dict = field(default_factory=dict)  # steering-token name -> vector fingerprint
    model_fingerprint: str | None = None  # backend.fingerprint (files/embeddings/engine dtype), once the model loads
    weights: str | None = None  # models.weights_fingerprint: every file of the model (None: simulated, no model)
    chat_template: dict = field(default_factory=dict)  # keyword arguments of the chat template (enable_thinking)

    @property
    def run_id(self) -> str:
        """Names the settings every record shares (tokens may grow with the run, so they are not part of it)."""
        core = json.dumps([self.model, self.backend, self.dtype, self.generation, self.scorer, self.weights,
                           self.chat_template], sort_keys=True)
        return hashlib.sha256(core.encode()).hexdigest()[:12]

    def conflicts(self, stored: "RunIdentity") -> list[str]:
        """Human-readable differences to a stored identity; tokens only where both name the same token."""
        differences = [f"{name}: {getattr(stored, name)!r} in the folder, {getattr(self, name)!r} now"
                       for name in ("model", "backend", "dtype") if getattr(stored, name) != getattr(self, name)]
        if stored.chat_template != self.chat_template:
            differences.append(f"chat template options: {stored.chat_template} in the folder, {self.chat_template} now")
        if stored.weights != self.weights:
            differences.append(f"model files: fingerprint {stored.weights} in the folder, {self.weights} now (another "
                               "model, or its weights, config or tokenizer changed)")
        for name in sorted(set(stored.generation) | set(self.generation)):
            old, new = stored.generation.get(name), self.generation.get(name)
            if old != new:
                differences.append(f"generation {name}: {old!r} in the folder, {new!r} now")
        if stored.scorer != self.scorer:
            differences.append(f"scorer: {stored.scorer} in the folder, {self.scorer} now (the verifiers changed; "
                               "`steer-eval analyze --rejudge` reads the stored records by today's rules)")
        for name in sorted(set(stored.tokens) & set(self.tokens)):
            if stored.tokens[name] != self.tokens[name]:
                differences.append(f"steering token {name}: vector {stored.tokens[name]} in the folder, "
                                   f"{self.tokens[name]} now (retrained, or another --tokens-dir)")
        if stored.model_fingerprint and self.model_fingerprint and stored.model_fingerprint != self.model_fingerprint:
            differences.append(f"model weights/dtype: {stored.model_fingerprint} in the folder, "
                               f"{self.model_fingerprint} now")
        return differences

    def merged(self, stored: "RunIdentity | None") -> "RunIdentity":
        if stored is None:
            return self
        return replace(self, tokens={**stored.tokens, **self.tokens},
                       model_fingerprint=self.model_fingerprint or stored.model_fingerprint)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RunIdentity":
        return cls(**data)


def manifest_path(records_path: Path) -> Path:
    return records_path.with_name(records_path.stem + ".manifest.json")


def read_manifest(records_path: Path) -> RunIdentity | None:
    path = manifest_path(records_path)
    if path.is_dir():
        raise RunMismatchError(f"{path} is a folder, not a manifest; move it away")
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest.get("manifest_version")
        identity = RunIdentity.from_json(manifest["identity"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunMismatchError(f"{path} is not a steer-eval manifest ({brief(error)}); restore it, "
                               "or rerun with --restart to move the folder's records aside and start over") from None
    if version != MANIFEST_VERSION:
        raise RunMismatchError(f"{path} was written by an older steer-eval (manifest version {version}) whose run "
                               "identity covered the model's input embeddings only, so its records cannot be told "
                               "apart from another model's; rerun with --restart to move them aside and start "
                               "over, or write to a new output (analyze still reads them)")
    return identity


def write_manifest(records_path: Path, identity: RunIdentity, throughput: dict | None = None) -> None:
    """`throughput` ({"evaluations", "seconds", "actors"} of the last run) feeds --dry-run's estimate; it is kept
    when not given, and is no part of the identity."""
    path = manifest_path(records_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"manifest_version": MANIFEST_VERSION, "run": identity.run_id, "identity": identity.to_json(),
               "steer_eval_version": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "command": " ".join(sys.argv), "throughput": throughput or read_throughput(records_path)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_throughput(records_path: Path) -> dict | None:
    try:
        return json.loads(manifest_path(records_path).read_text(encoding="utf-8")).get("throughput")
    except (OSError, ValueError, AttributeError):
        return None


def check_identity(records_path: Path, identity: RunIdentity) -> RunIdentity | None:
    """The folder's stored identity after checking it against this run's; refuses a different run."""
    stored = read_manifest(records_path)
    if stored is None:
        if records_path.is_file() and records_path.stat().st_size > 0:
            raise RunMismatchError(f"{records_path} holds records but no manifest ({manifest_path(records_path).name}), "
                                   "so nothing says which run wrote them; write to a new output, or rerun with "
                                   "--restart to move them aside and start over")
        return None
    differences = identity.conflicts(stored)
    if differences:
        raise RunMismatchError(f"{records_path} holds records of another run: {'; '.join(differences)}. "
                               "Write to a new output, or rerun with --restart to move the old records aside "
                               "and start over")
    return stored


def records_stem(source: Path) -> str:
    """`records.jsonl`, `records.tar.gz` -> `records`: the name its sidecars start with."""
    return Path(source.name.removesuffix(".tar.gz")).stem


def sidecars(records_path: Path) -> list[Path]:
    """Files that belong to a records file's run: its manifest, fluency scores and judge folders."""
    stem = records_stem(records_path)
    paths = [manifest_path(records_path), records_path.with_name(stem + FLUENCY_SUFFIX),
             records_path.with_name(stem + JUDGE_SUFFIX)]
    if records_path.name == "records.jsonl":  # a grid's folder: `judge FOLDER` and `score FOLDER` write these
        paths.append(records_path.with_name(FOLDER_JUDGE))
    return paths


def set_aside(records_path: Path) -> Path | None:
    """--restart: move the records and every sidecar of their run to a dated backup name; nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = None
    for path in (records_path, *sidecars(records_path)):
        if path.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}")
            os.replace(path, target)
            log.warning("moved the previous run's %s aside to %s", path.name, target)
            moved = moved or target
    return moved


def check_sidecar_run(sidecar: Path, sidecar_runs: set[str], records_runs: set[str]) -> None:
    """Scores computed from another run's records are refused: they would be shown next to records they never
    scored (e.g. after --restart, or a fluency file copied into another folder)."""
    foreign = sorted(sidecar_runs - records_runs)
    if foreign:
        raise RunMismatchError(f"{sidecar} holds scores of run {', '.join(repr(r) for r in foreign[:3])}, but the "
                               f"records are of run {', '.join(repr(r) for r in sorted(records_runs)[:3]) or 'none'}; "
                               "move it away (or delete it) and score the records again")


@contextmanager
def exclusive(records_path: Path) -> Iterator[None]:
    """One writer per records file: a second run into the same output is refused while the first is running."""
    records_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = records_path.with_name(records_path.name + ".lock")
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another steer-eval run is writing {records_path}; wait for it to finish or "
                            "use another output") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
