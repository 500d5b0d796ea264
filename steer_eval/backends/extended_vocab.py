"""A copy of a model folder whose embedding table has spare rows for steering vectors.

vLLM serves prompts of token ids at full speed, but prompts carrying embeddings cost 20-36% of its throughput
(docs/benchmarks/throughput.md). So the vLLM backend gives every steering token a row of its own in the engine's
embedding table, appended after the last id the tokenizer can produce, and sends plain token ids. This module
writes the model folder with those extra rows (zeros; the engine fills them at run time) once, cached under
$STEER_EVAL_HOME. The rows also lengthen the output projection (tied or not), so the engine masks their logits: see
backends/vllm.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer_eval.steering.model_store import ModelError, home
from steer_eval.steering.models import INPUT_EMBEDDING_SUFFIXES, OUTPUT_EMBEDDING_SUFFIXES, find_tensor, weight_files

DEFAULT_SPARE_ROWS = 64  # 19 steering tokens exist; a multiple of 64 keeps vLLM's vocabulary padding at zero
FORMAT_VERSION = 1  # bump when the written folder changes, so stale caches are not reused


@dataclass(frozen=True)
class ExtendedModel:
    """A model folder with `spare_rows` rows after the original `vocab_size` rows of its embedding table."""
    folder: Path
    vocab_size: int
    spare_rows: int

    def row_id(self, index: int) -> int:
        if not 0 <= index < self.spare_rows:
            raise IndexError(f"spare row {index} outside 0..{self.spare_rows - 1}")
        return self.vocab_size + index


def _cache_key(source: Path, spare_rows: int) -> str:
    # Path, size and modification time of every file: a changed source gets a new folder, not a stale one.
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(source.iterdir()) if p.is_file()]
    blob = json.dumps([FORMAT_VERSION, str(source.resolve()), spare_rows, stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _write_extended(source: Path, target: Path, spare_rows: int) -> None:
    config = json.loads((source / "config.json").read_text())
    if "vocab_size" not in config:
        raise ModelError(f"{source}/config.json has no top-level vocab_size; the vLLM backend supports "
                         "decoder-only models with a plain config (e.g. Llama, Qwen, Mistral)")
    vocab_size = int(config["vocab_size"])
    grown = {key for _, key in filter(None, (find_tensor(source, INPUT_EMBEDDING_SUFFIXES, True),
                                             find_tensor(source, OUTPUT_EMBEDDING_SUFFIXES, False)))}
    for path in source.iterdir():
        if path.suffix == ".safetensors":
            continue
        if path.is_file() and path.name != "config.json":
            shutil.copy2(path, target / path.name)
    for path in weight_files(source):
        with safe_open(path, framework="pt") as handle:
            if not grown & set(handle.keys()):
                os.symlink(path.resolve(), target / path.name)  # untouched weights: no second copy on disk
                continue
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata()
        for key in grown & tensors.keys():
            rows = tensors[key]
            if rows.shape[0] != vocab_size:
                raise ModelError(f"{key} in {path} has {rows.shape[0]} rows but config.json says vocab_size "
                                 f"{vocab_size}")
            tensors[key] = torch.cat([rows, rows.new_zeros(spare_rows, rows.shape[1])])
        save_file(tensors, target / path.name, metadata=metadata)
    config["vocab_size"] = vocab_size + spare_rows
    config["steer_eval_spare_rows"] = {"original_vocab_size": vocab_size, "spare_rows": spare_rows,
                                       "source": str(source.resolve())}
    (target / "config.json").write_text(json.dumps(config, indent=2))


def extended_model(source: str | Path, spare_rows: int = DEFAULT_SPARE_ROWS) -> ExtendedModel:
    """The cached copy of `source` with `spare_rows` zero rows appended to its embedding table (built once)."""
    source = Path(source)
    if spare_rows < 1:
        raise ValueError(f"spare_rows must be >= 1, got {spare_rows}")
    if not (source / "config.json").is_file():
        raise ModelError(f"{source} is not a local model folder with a config.json; the vLLM backend needs one "
                         "(use an embedded model name such as smollm2-135m, or download the model first)")
    target = home() / "vllm_models" / f"{source.name}+{spare_rows}rows-{_cache_key(source, spare_rows)}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        try:
            _write_extended(source, partial, spare_rows)
            os.rename(partial, target)
        except OSError:
            if not (target / "config.json").is_file():  # not just another process finishing first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    info = json.loads((target / "config.json").read_text())["steer_eval_spare_rows"]
    return ExtendedModel(target, int(info["original_vocab_size"]), int(info["spare_rows"]))
