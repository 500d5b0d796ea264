"""The model store: where models and caches live ($STEER_EVAL_HOME), and file hashes computed once per file state."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from steer_eval.errors import UserError

MANIFEST = "steer_eval_manifest.json"
_STAMPS_FILE = "file_stamps.json"


class ModelError(UserError, RuntimeError):
    """A user-facing problem obtaining or loading a model."""


def home() -> Path:
    return Path(os.environ.get("STEER_EVAL_HOME", Path.home() / ".cache" / "steer_eval"))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def remembered(key: str, files: list[Path], compute) -> str:
    """compute() once per state of `files`: its result is kept in $STEER_EVAL_HOME under `key` with the files'
    stamp (names, sizes, modification times, inodes), so a later call on unchanged files reads none of them."""
    stamp = hashlib.sha256(json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino]
                                       for p in files]).encode()).hexdigest()
    known_path = home() / _STAMPS_FILE
    try:
        known = json.loads(known_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    cached = known.get(key)
    if isinstance(cached, dict) and cached.get("stamp") == stamp and isinstance(cached.get("value"), str):
        return cached["value"]
    value = compute()
    known[key] = {"stamp": stamp, "value": value}
    try:
        known_path.parent.mkdir(parents=True, exist_ok=True)
        partial = known_path.with_name(f".{known_path.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(partial, known_path)
    except OSError:
        pass  # a read-only home only costs computing it again next time
    return value
