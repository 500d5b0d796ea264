"""A trainer's output folder (`--out_dir`) as one run with an identity, and the training-data loader the trainers
(trainers/train.py, trainers/train_prosv.py, benchmarks/bench_train.py) share.

A run's files: `run.json` (the manifest), `ckpt.pt`, `log.jsonl`, `summary.json`. Before its first step a trainer
writes `run.json` (a temporary file, then os.replace): a run id (new at every start), the trainer, its settings
minus those a resume may change (`VOLATILE`), the SHA-256 of every data and validation file's bytes, the model's
weights fingerprint (`steer_eval.steering.models.weights_fingerprint`) and, for stage `and`, the frozen tokens' fingerprints.
Every checkpoint carries the run id; a finished run's manifest says where its tokens went.

- A fresh run goes into an absent or empty folder (files that are not a run's do not count).
- A folder holding a run of other settings, data or model, or a run's files without `run.json`, is refused; so is a
  finished run of the same settings (the message says where its tokens are), and an unfinished one that has a
  checkpoint (`--resume` continues it). The same settings into a run killed before its first checkpoint start that
  run again from step 0: nothing is lost that it would not write again.
- `--restart` moves the run's files into `<out_dir>/replaced-<YYYYmmdd-HHMMSS>/` (nothing is deleted), then starts.
- `--resume` takes the settings from `run.json`; the data, model and frozen tokens must still be what it names, and
  the checkpoint must carry its run id. A run killed before its first checkpoint starts from step 0; a finished run
  has nothing to resume and is refused.
- The log is append-only. On resume the lines after the checkpoint's log position are dropped (they are written
  again); a log shorter than that position, or not ending a line there, is refused (never padded); a last line cut
  short by a crash is removed first (`steer_eval.runs.records.repair_tail`).

Every file read here (data, manifest, checkpoint) that is missing, a directory, empty, not UTF-8, not JSON or of
the wrong shape raises a `UserError` whose message is one line naming the file, what is wrong and the fix.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer_eval.scoring.behaviors import BEHAVIORS
from steer_eval.errors import RunMismatchError, UserError, brief
from steer_eval.runs.records import repair_tail
from steer_eval.steering.tokens import TokenError

logger = logging.getLogger(__name__)

MANIFEST, CHECKPOINT, LOG, SUMMARY = "run.json", "ckpt.pt", "log.jsonl", "summary.json"
RUN_FILES = (MANIFEST, CHECKPOINT, CHECKPOINT + ".tmp", LOG, SUMMARY, MANIFEST + ".tmp")

# may change on --resume
VOLATILE = ("resume", "restart", "stop_after", "device", "cuda_graphs", "out_dir", "overwrite_tokens")
BY_CONTENT = ("model", "data", "val_data_path")  # compared by the files' contents, not their paths
MANIFEST_VERSION = 1
DATA_FIX = "make the data with trainers/build_data.py"


class TrainingInputError(UserError):
    """A file handed to a trainer (data, manifest, checkpoint) that it cannot use."""


class TrainingRunError(RunMismatchError):
    """An output folder that holds another run, or a run that cannot continue as asked."""


def short(value, limit: int = 80) -> str:
    """repr() of a value from a file, cut to `limit` characters: a hostile file cannot flood the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(value) -> str:
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
        raise TrainingInputError(f"{where} is {_kind(row)}, not a record (every record needs prompt, response and "
                                 f"behaviors); {DATA_FIX}")
    missing = [key for key in ("prompt", "response", "behaviors") if key not in row]
    if missing:
        raise TrainingInputError(f"{where} has no {', '.join(missing)} (every record needs prompt, response and "
                                 f"behaviors); {DATA_FIX}")
    for key in ("prompt", "response"):
        if not isinstance(row[key], str):
            raise TrainingInputError(f"{where}: {key} is {_kind(row[key])}, not a string; {DATA_FIX}")
    behaviors = row["behaviors"]
    if not isinstance(behaviors, list) or not behaviors or not all(isinstance(b, str) for b in behaviors):
        raise TrainingInputError(f"{where}: behaviors is {short(behaviors, 60)}, not a non-empty list of behaviour "
                                 f"ids; {DATA_FIX}")
    for behavior in behaviors:
        if behavior not in BEHAVIORS:
            raise TrainingInputError(f"{where}: unknown behaviour {short(behavior, 60)}; known behaviours: "
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
                raise TrainingInputError(f"{path} holds {_kind(rows)}, not a list of records (every record needs "
                                         f"prompt, response and behaviors); {DATA_FIX}")
            places = [f"{path} record {n}" for n in range(1, len(rows) + 1)]
        if not rows:
            raise TrainingInputError(f"{path} holds no records; {DATA_FIX}")
        records.extend(check_record(row, where, stage) for row, where in zip(rows, places))
    return records, digests


def load_records(paths, stage: str | None = None) -> list[dict]:
    return read_training_data(paths, stage)[0]


# ----------------------------------------------------------------------------- settings restored from a file

def restore_config(cls, saved, source) -> object:
    """An instance of the dataclass `cls` from a dict read from `source`, every field's type checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(saved, dict):
        raise TrainingInputError(f"{source}: the settings are {_kind(saved)}, not a JSON object; --restart to start "
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
            raise TrainingInputError(f"{source}: setting {name} is {short(value, 40)}, not a {expected}; restore the "
                                     "file, or --restart")
    return cls(**saved)


# ----------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class TrainingIdentity:
    """What a run's result depends on."""
    trainer: str  # train.py | train_prosv.py
    config: dict  # the settings, minus VOLATILE
    data: list  # [[path, sha256], ...] in the order given (order matters: it seeds the shuffle)
    val_data: list = field(default_factory=list)
    model: str = ""  # weights fingerprint
    tokens: dict = field(default_factory=dict)  # frozen token -> vector fingerprint (stage and)

    @classmethod
    def of(cls, trainer: str, config: dict, data, model: str, val_data=(), tokens=None) -> "TrainingIdentity":
        kept = {k: v for k, v in config.items() if k not in VOLATILE}
        return cls(trainer, kept, [list(d) for d in data], [list(d) for d in val_data], model, dict(tokens or {}))

    def conflicts(self, stored: "TrainingIdentity") -> list[str]:
        """What differs from a stored identity, in words."""
        differences = []
        if stored.trainer != self.trainer:
            differences.append(f"trainer: {stored.trainer} in the folder, {self.trainer} now")
        for name in sorted(set(stored.config) | set(self.config)):
            old, new = stored.config.get(name), self.config.get(name)
            if name not in BY_CONTENT and old != new:
                differences.append(f"{name}: {short(old, 60)} in the folder, {short(new, 60)} now")
        for what, old, new in (("data", stored.data, self.data), ("validation data", stored.val_data, self.val_data)):
            if [sha for _, sha in old] != [sha for _, sha in new]:
                differences.append(f"{what}: {_files(old)} in the folder, {_files(new)} now")
        if stored.model != self.model:
            differences.append(f"model weights: {stored.model} in the folder, {self.model} now "
                               f"({short(self.config.get('model'), 60)})")
        for name in sorted(set(stored.tokens) | set(self.tokens)):
            if stored.tokens.get(name) != self.tokens.get(name):
                differences.append(f"frozen token {name}: {stored.tokens.get(name)} in the folder, "
                                   f"{self.tokens.get(name)} now")
        return differences


def _files(digests) -> str:
    text = ", ".join(f"{Path(path).name} (sha256 {sha[:12]})" for path, sha in digests) or "none"
    return text if len(text) <= 200 else text[:197] + "..."


def check_tokens_free(store, names, out_dir, overwrite: bool) -> None:
    """Tokens a run will save must not replace those of a training in another out_dir (the default folder of the
    default model holds the shipped tokens) without --overwrite_tokens. A run into the same out_dir may: that
    folder's own run identity already refuses another run there unless --restart."""
    here = Path(out_dir).resolve()
    taken = []
    for name in names:
        if store.has(name):
            try:
                trained_in = store.load(name).training_config.get("out_dir")
            except TokenError:
                trained_in = None  # unreadable: nothing readable is lost, but ask all the same
            if trained_in is None or Path(trained_in).resolve() != here:
                taken.append(name)
    if taken and not overwrite:
        raise TrainingRunError(f"{store.directory} already holds steering tokens {', '.join(taken)} of another "
                               "training; give another --tokens_dir, or --overwrite_tokens to replace them")


# ----------------------------------------------------------------------------- the folder

class RunFolder:
    """One trainer's --out_dir: its manifest, checkpoint, log and summary."""

    def __init__(self, out_dir, trainer: str):
        self.path, self.trainer = Path(out_dir), trainer
        self.manifest, self.checkpoint = self.path / MANIFEST, self.path / CHECKPOINT
        self.log, self.summary = self.path / LOG, self.path / SUMMARY
        self.replaced: Path | None = None  # where --restart moved the previous run's files
        self._lock = None

    def check(self, identity: TrainingIdentity, resume: bool, restart: bool, checkpoint: dict | None = None) -> None:
        """Refuse what open() would refuse, writing and moving nothing (before the model loads); then hold the
        folder for this trainer until the process ends (open() checks again under the lock)."""
        self.open(identity, resume, restart, checkpoint, write=False)
        self._hold()

    def _hold(self) -> None:
        # Beside the folder, not in it, and only once the run is accepted: a refused run leaves nothing behind.
        lock_path = self.path.absolute().with_name(f".{self.path.name}.trainer.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise TrainingRunError(f"another trainer is writing {self.path}; wait for it to finish or use another "
                                   "--out_dir") from None
        self._lock = handle

    def open(self, identity: TrainingIdentity, resume: bool, restart: bool, checkpoint: dict | None = None,
             command: str = "", write: bool = True) -> str | None:
        """The run id of the run to train: the folder's own on --resume (checked against `identity` and the
        checkpoint), else a new one whose manifest is written now (see start())."""
        if resume:
            return self.resume(identity, checkpoint)
        run, self.replaced = self.start(identity, restart, command, write)
        return run

    def run_files(self) -> list[str]:
        return [name for name in RUN_FILES if os.path.lexists(self.path / name)]

    def read_manifest(self) -> dict | None:
        """The validated manifest, or None when the folder has none."""
        if not os.path.lexists(self.manifest):
            return None
        fix = "restore it, or --restart to move the folder's run aside and start over"
        data = parse_json(self.manifest, read_input(self.manifest, fix), fix)
        shape = {"manifest_version": int, "run": str, "trainer": str, "config": dict, "data": list,
                 "val_data": list, "model": str, "tokens": dict}
        if not isinstance(data, dict):
            problem = f"it is {_kind(data)}, not an object"
        else:
            problem = next((f"{key} is {'missing' if key not in data else _kind(data[key])}"
                            for key, kind in shape.items() if not isinstance(data.get(key), kind)), None)
        if problem is None and data["manifest_version"] != MANIFEST_VERSION:
            problem = f"manifest_version {short(data['manifest_version'])}"
        if problem is None and not all(isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
                                       for d in data["data"] + data["val_data"]):
            problem = "data is not a list of [path, sha256]"
        if problem is None and not isinstance(data.get("finished"), (dict, type(None))):
            problem = f"finished is {_kind(data['finished'])}"
        if problem:
            raise TrainingInputError(f"{self.manifest} is not a run manifest this trainer wrote ({problem}); {fix}")
        return data

    @staticmethod
    def identity(manifest: dict) -> TrainingIdentity:
        return TrainingIdentity(manifest["trainer"], manifest["config"], manifest["data"], manifest["val_data"],
                                manifest["model"], manifest["tokens"])

    def _unlabelled(self, files) -> TrainingRunError:
        return TrainingRunError(f"{self.path} holds {', '.join(files)} but no {MANIFEST}, so nothing says which run "
                                "wrote them (an older trainer, or another program); train into another --out_dir, "
                                "or --restart to move them aside and start over")

    def _finished(self, manifest) -> str:
        finished = manifest["finished"]
        where = finished.get("tokens_dir") if isinstance(finished, dict) else None
        return (f"{self.path} holds a finished run of these settings (run {manifest['run']}; its tokens are in "
                f"{where}, its summary in {self.summary})")

    def start(self, identity: TrainingIdentity, restart: bool, command: str = "",
              write: bool = True) -> tuple[str | None, Path | None]:
        """A fresh run: refuse a folder holding another run (or move it aside with `restart`), then write the
        manifest. Returns (run id, where the old files went or None); without `write`, only refuses."""
        if self.path.exists() and not self.path.is_dir():
            raise TrainingRunError(f"--out_dir {self.path} is a file, not a folder; give a folder")
        if restart and not write:
            return None, None
        moved = self.set_aside() if restart else None
        manifest = self.read_manifest()
        files = self.run_files()
        if manifest is None and files:
            raise self._unlabelled(files)
        if manifest is not None:
            differences = identity.conflicts(self.identity(manifest))
            if differences:
                finished = manifest.get("finished")
                raise TrainingRunError(f"{self.path} holds another run ({'; '.join(differences[:6])})"
                                       f"{', finished' if finished else ''}; "
                                       f"{'' if finished else 'continue that run with --resume (its own settings), '}"
                                       "train into another --out_dir, or --restart to move its files aside and start "
                                       "over")
            if manifest.get("finished"):
                raise TrainingRunError(f"{self._finished(manifest)}; nothing to do. --restart trains it again "
                                       "(moves its files aside), or train into another --out_dir")
            if os.path.lexists(self.checkpoint):
                raise TrainingRunError(f"{self.path} holds an unfinished run of these settings with a checkpoint "
                                       f"({self.checkpoint}); continue it with --resume, or --restart to move its "
                                       "files aside and start over")
            logger.info("%s: run %s of these settings stopped before its first checkpoint; starting it again",
                        self.path, manifest["run"])
        if not write:
            return None, None
        run = secrets.token_hex(6)
        self._write({"manifest_version": MANIFEST_VERSION, "run": run, **dataclasses.asdict(identity),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "finished": None})
        return run, moved

    def manifest_for_resume(self) -> dict:
        """--resume: the manifest of the run to continue (refused when there is none, or it finished)."""
        manifest = self.read_manifest()
        if manifest is None:
            files = self.run_files()
            if files:
                raise TrainingRunError(f"--resume, but {self.path} holds {', '.join(files)} and no {MANIFEST}, so "
                                       "nothing says which run they belong to (an older trainer?); --restart moves "
                                       "them aside and starts over, or train into another --out_dir")
            raise TrainingRunError(f"--resume, but {self.path} holds no run ({self.manifest} does not exist); start "
                                   "without --resume")
        if manifest["trainer"] != self.trainer:
            raise TrainingRunError(f"--resume, but {self.path} holds a run of {manifest['trainer']}, not "
                                   f"{self.trainer}; resume it with that trainer")
        if manifest.get("finished"):
            raise TrainingRunError(f"--resume, but {self._finished(manifest)}; nothing to resume. --restart trains "
                                   "it again (moves its files aside)")
        return manifest

    def resume(self, identity: TrainingIdentity, checkpoint: dict | None) -> str:
        """--resume: check that the inputs are still the run's, the checkpoint (if any) its own and the log the one
        the checkpoint saw; the run id."""
        manifest = self.manifest_for_resume()
        differences = identity.conflicts(self.identity(manifest))
        if differences:
            raise TrainingRunError(f"--resume, but the run in {self.path} was started on other inputs "
                                   f"({'; '.join(differences[:6])}); restore them, or --restart to train on these "
                                   "(moves the run's files aside)")
        if checkpoint is None and os.path.lexists(self.checkpoint):
            raise TrainingRunError(f"{self.checkpoint} appeared after the run's checkpoint was read; rerun --resume")
        if checkpoint is not None:
            self.check_checkpoint_run(checkpoint["run"], manifest)
        self.check_log(checkpoint["log_position"] if checkpoint is not None else 0)
        return manifest["run"]

    def read_checkpoint(self, manifest: dict) -> dict | None:
        """--resume: the run's checkpoint (None if it has none yet), checked to be this run's (run id, settings)."""
        if not os.path.lexists(self.checkpoint):
            return None
        checkpoint = read_checkpoint(self.checkpoint, CHECKPOINT_FIELDS)
        self.check_checkpoint_run(checkpoint["run"], manifest)
        if {k: v for k, v in checkpoint["config"].items() if k not in VOLATILE} != manifest["config"]:
            raise TrainingInputError(f"{self.checkpoint} holds other settings than {self.manifest} of the same run; "
                                     "restore them, or --restart to start over")
        return checkpoint

    def check_checkpoint_run(self, checkpoint_run: str | None, manifest: dict) -> None:
        if checkpoint_run is not None and checkpoint_run != manifest["run"]:
            raise TrainingRunError(f"{self.checkpoint} belongs to run {short(checkpoint_run, 40)}, not to the run in "
                                   f"{self.manifest} ({manifest['run']}): a checkpoint of another run; move it away "
                                   "(--resume then starts this run from step 0), or --restart to start over")

    def check_log(self, position: int) -> None:
        """Refuse a log that is not the one the checkpoint saw: shorter than its `position`, or no line ending there."""
        fix = "restore it, or --restart to move the run's files aside and start over"
        if self.log.is_dir():
            raise TrainingRunError(f"{self.log} is a directory, not the run's log; {fix}")
        size = self.log.stat().st_size if self.log.exists() else 0
        if position < 0:
            raise TrainingRunError(f"{self.checkpoint} records a log position of {position}; move it away (--resume "
                                   "then starts the run from step 0), or --restart")
        if size < position:
            raise TrainingRunError(f"{self.log} holds {size} bytes, fewer than the {position} the checkpoint saw "
                                   f"(cut or replaced since); {fix}")
        if position:
            with open(self.log, "rb") as handle:
                handle.seek(position - 1)
                if handle.read(1) != b"\n":
                    raise TrainingRunError(f"{self.log} does not end a line where the checkpoint's log ended "
                                           f"(byte {position}), so it is not the log the checkpoint saw; {fix}")

    def open_log(self, position: int) -> None:
        """Make the log end where the checkpoint saw it end (`position` bytes; 0 without a checkpoint), dropping
        the lines written after it, and ready for appending. Never pads it."""
        self.check_log(position)
        with open(self.log, "ab") as handle:
            if handle.tell() > position:
                handle.truncate(position)
        repair_tail(self.log)

    def finish(self, **details) -> None:
        """Mark the run finished (tokens_dir=..., tokens=[...], ...) in its manifest."""
        manifest = self.read_manifest()
        manifest["finished"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
        self._write(manifest)

    def set_aside(self) -> Path | None:
        """--restart: move the run's files into a dated subfolder; nothing is deleted."""
        files = self.run_files()
        if not files:
            return None
        stamp, suffix = time.strftime("%Y%m%d-%H%M%S"), 0
        while True:
            target = self.path / f"replaced-{stamp}{f'-{suffix}' if suffix else ''}"
            try:
                target.mkdir()
                break
            except FileExistsError:
                suffix += 1
        for name in files:
            os.replace(self.path / name, target / name)
        logger.info("moved %s of %s into %s", ", ".join(files), self.path, target)
        return target

    def _write(self, manifest: dict) -> None:
        tmp = self.manifest.with_name(MANIFEST + ".tmp")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.manifest)
        except OSError as error:
            raise TrainingRunError(f"cannot write {self.manifest} ({error.strerror}); give a writable --out_dir") \
                from None


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_FIELDS = {"run": str, "config": dict, "step": int, "vectors": dict, "optimizer": dict, "scheduler": dict,
                     "torch_rng": torch.Tensor, "python_rng": tuple, "log_position": int,
                     "cuda_rng": (list, type(None))}


def save_checkpoint(path, run: str, config: dict, step: int, params: dict, optimizer, scheduler,
                    log_position: int) -> None:
    """Everything an exact continuation needs, written to a temporary file and renamed: an interrupt never leaves a
    half-written checkpoint. `log_position`: the log's size now (a resume drops what was logged after it)."""
    state = {"run": run, "config": config, "step": step,
             "vectors": {name: p.detach().cpu() for name, p in params.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "log_position": log_position,
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def restore_checkpoint(checkpoint: dict, path, params: dict, optimizer, scheduler) -> int:
    """Put the vectors, optimiser, schedule and RNG states back as they were at the checkpoint's step (returned)."""
    try:
        with torch.no_grad():
            for name, p in params.items():
                if checkpoint["vectors"][name].shape != p.shape:
                    raise ValueError(f"vector {name} has shape {tuple(checkpoint['vectors'][name].shape)}, "
                                     f"the model's is {tuple(p.shape)}")
                p.copy_(checkpoint["vectors"][name])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        random.setstate(checkpoint["python_rng"])
        if checkpoint["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise TrainingInputError(f"{path} does not fit this run ({brief(error, 160)}); move it away "
                                 "(--resume then starts the run from step 0), or --restart") from None
    return checkpoint["step"]


def read_checkpoint(path, fields: dict) -> dict:
    """A checkpoint loaded with weights_only=True (a crafted pickle cannot run code), its top-level keys and their
    types checked against `fields` (name -> type or tuple of types)."""
    fix = "move it away (--resume then starts the run from step 0), or --restart to start over"
    read_input(path, fix)  # directory, empty, unreadable
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the unpickler says, the file is not ours
        raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote ({brief(error, 160)}); "
                                 f"{fix}") from None
    if not isinstance(checkpoint, dict):
        raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote (it holds a "
                                 f"{type(checkpoint).__name__}, not a dict); {fix}")
    for name, kind in fields.items():
        if name not in checkpoint:
            raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote (no {name}); {fix}")
        if not isinstance(checkpoint[name], kind) or (isinstance(checkpoint[name], bool) and kind is int):
            raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote ({name} is a "
                                     f"{type(checkpoint[name]).__name__}); {fix}")
    return checkpoint


def check_checkpoint_state(checkpoint: dict, path, names, total_steps: int) -> None:
    """What a run's checkpoint must hold for its trained vectors `names`, before any model loads: one 1-D float
    tensor per name (all of one length; the optimiser's state of the same shape) and a step within the run."""
    vectors, problem = checkpoint["vectors"], None
    shapes = {tuple(v.shape) for v in vectors.values() if hasattr(v, "shape")}
    if sorted(vectors, key=str) != sorted(names):
        problem = f"its vectors are {short(sorted(vectors, key=str), 60)}, the run trains {names}"
    elif len(shapes) != 1 or not all(getattr(v, "ndim", 0) == 1 and v.is_floating_point() for v in vectors.values()):
        problem = f"its vectors are not 1-D float tensors of one length (shapes {short(sorted(shapes), 60)})"
    elif not 0 <= checkpoint["step"] <= total_steps:
        problem = f"step {checkpoint['step']} is outside the run's 0..{total_steps}"
    elif checkpoint["log_position"] < 0:
        problem = f"log position {checkpoint['log_position']}"
    else:
        groups, state = checkpoint["optimizer"].get("param_groups"), checkpoint["optimizer"].get("state")
        if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
                and isinstance(groups[0].get("params"), list) and len(groups[0]["params"]) == len(names)
                and isinstance(state, dict)):
            problem = "its optimiser state is not that of this run's vectors"
        elif any(hasattr(t, "shape") and t.ndim and tuple(t.shape) not in shapes
                 for entry in state.values() if isinstance(entry, dict) for t in entry.values()):
            problem = "its optimiser state has tensors of another shape than its vectors"
    if problem:
        raise TrainingInputError(f"{path} is not a checkpoint of this run ({problem}); move it away (--resume then "
                                 "starts the run from step 0), or --restart to start over")


def token_fingerprints(store, names) -> dict:
    """Steering tokens a run keeps frozen, read from `store` (a TokenStore) before the model loads: name ->
    fingerprint; a missing or damaged token is a TokenError naming its folder."""
    fingerprints = {}
    for name in sorted(names):
        try:
            fingerprints[name] = store.load(name).fingerprint
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as error:
            raise TokenError(f"steering token files in {store.path(name)} are corrupt ({brief(error, 80)}); "
                             "delete the folder and train the token again") from None
    return fingerprints
