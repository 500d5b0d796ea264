"""A trainer's output folder (`--out_dir`) as one run with an identity, held by one trainer at a time (a lock file
beside it). Shared by trainers/train.py and trainers/train_prosv.py.

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
  short by a crash is removed first, and lines are appended, by the records' crash rule
(`steer_eval.runs.records.append_rows`).

A manifest or checkpoint that cannot be used raises a `UserError` whose message is one line naming the file, what is
wrong and the fix (`steer_eval.training.inputs`, `steer_eval.training.checkpoints`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from steer_eval.errors import RunMismatchError, brief, quoted
from steer_eval.runs.records import repair_tail
from steer_eval.steering.tokens import TokenError
from steer_eval.training.checkpoints import CHECKPOINT_FIELDS, read_checkpoint
from steer_eval.training.inputs import TrainingInputError, kind_of, parse_json, read_input

logger = logging.getLogger(__name__)

MANIFEST, CHECKPOINT, LOG, SUMMARY = "run.json", "ckpt.pt", "log.jsonl", "summary.json"
RUN_FILES = (MANIFEST, CHECKPOINT, CHECKPOINT + ".tmp", LOG, SUMMARY, MANIFEST + ".tmp")

# may change on --resume
VOLATILE = ("resume", "restart", "stop_after", "device", "cuda_graphs", "out_dir", "overwrite_tokens")
# Settings added after runs were made, with the value those runs had: left out of a run's identity at that value, so
# runs begun before the setting existed still resume and a default run's identity is what it was.
ADDED_LATER = {"and_init": "zero"}
BY_CONTENT = ("model", "data", "val_data_path")  # compared by the files' contents, not their paths
MANIFEST_VERSION = 1


def identity_settings(config: dict) -> dict:
    """The settings that identify a run: all but VOLATILE, and but ADDED_LATER ones at their old value."""
    return {k: v for k, v in config.items()
            if k not in VOLATILE and not (k in ADDED_LATER and v == ADDED_LATER[k])}


class TrainingRunError(RunMismatchError):
    """An output folder that holds another run, or a run that cannot continue as asked."""


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
        kept = identity_settings(config)
        return cls(trainer, kept, [list(d) for d in data], [list(d) for d in val_data], model, dict(tokens or {}))

    def conflicts(self, stored: "TrainingIdentity") -> list[str]:
        """What differs from a stored identity, in words."""
        differences = []
        if stored.trainer != self.trainer:
            differences.append(f"trainer: {stored.trainer} in the folder, {self.trainer} now")
        for name in sorted(set(stored.config) | set(self.config)):
            old, new = stored.config.get(name), self.config.get(name)
            if name not in BY_CONTENT and old != new:
                differences.append(f"{name}: {quoted(old, 60)} in the folder, {quoted(new, 60)} now")
        for what, old, new in (("data", stored.data, self.data), ("validation data", stored.val_data, self.val_data)):
            if [sha for _, sha in old] != [sha for _, sha in new]:
                differences.append(f"{what}: {_files(old)} in the folder, {_files(new)} now")
        if stored.model != self.model:
            differences.append(f"model weights: {stored.model} in the folder, {self.model} now "
                               f"({quoted(self.config.get('model'), 60)})")
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
            problem = f"it is {kind_of(data)}, not an object"
        else:
            problem = next((f"{key} is {'missing' if key not in data else kind_of(data[key])}"
                            for key, kind in shape.items() if not isinstance(data.get(key), kind)), None)
        if problem is None and data["manifest_version"] != MANIFEST_VERSION:
            problem = f"manifest_version {quoted(data['manifest_version'])}"
        if problem is None and not all(isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
                                       for d in data["data"] + data["val_data"]):
            problem = "data is not a list of [path, sha256]"
        if problem is None and not isinstance(data.get("finished"), (dict, type(None))):
            problem = f"finished is {kind_of(data['finished'])}"
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
        if identity_settings(checkpoint["config"]) != manifest["config"]:
            raise TrainingInputError(f"{self.checkpoint} holds other settings than {self.manifest} of the same run; "
                                     "restore them, or --restart to start over")
        return checkpoint

    def check_checkpoint_run(self, checkpoint_run: str | None, manifest: dict) -> None:
        if checkpoint_run is not None and checkpoint_run != manifest["run"]:
            raise TrainingRunError(f"{self.checkpoint} belongs to run {quoted(checkpoint_run, 40)}, not to the run in "
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
