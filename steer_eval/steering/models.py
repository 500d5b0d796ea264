"""Model resolution: an embedded model name, a local folder or a Hugging Face id; the fingerprint of everything in
a model folder that changes its answers; loading it; and reading its weights without building it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from steer_eval.errors import brief
from steer_eval.steering.embedded import EMBEDDED_MODELS, fetch
from steer_eval.steering.model_store import MANIFEST, ModelError, file_sha256, remembered

if TYPE_CHECKING:
    import torch

def resolve_model_path(spec: str) -> str:
    """An embedded model name, a local folder, or a Hugging Face id (returned as is)."""
    if spec in EMBEDDED_MODELS:
        return str(fetch(spec))
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser().resolve())
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model folder {spec!r} does not exist; pass an existing folder, an embedded model name "
                         f"({', '.join(EMBEDDED_MODELS)}) or a Hugging Face id")
    return spec


# Everything in a model folder that changes its answers: weights, config, tokenizer, chat template, custom code.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".jinja",
                      ".tiktoken", ".py")


def _identity_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.name != MANIFEST
                  and path.suffix in _IDENTITY_SUFFIXES)


def _folder_of(spec: str) -> Path:
    path = Path(resolve_model_path(spec))
    if path.is_dir():
        return path
    try:  # a Hugging Face id: the files of its local snapshot (downloaded once, as loading it would)
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(spec, allow_patterns=[f"*{suffix}" for suffix in _IDENTITY_SUFFIXES]))
    except Exception as error:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise ModelError(f"cannot read model {spec!r} ({type(error).__name__}: {str(error)[:200]}); give a local "
                         "model folder, an embedded model name or a Hugging Face id this machine can download") from None


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _check_model_files(folder: Path, files: list[Path]) -> None:
    """What loading would trip over, named before anything loads: a config that is not one, unreadable weights."""
    from safetensors import safe_open

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ValueError("no model_type")
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder / 'config.json'} is not a model configuration ({brief(error)}); give a Hugging "
                         "Face model folder (config.json, weights, tokenizer)") from None
    if not _has_chat_template(folder):
        raise ModelError(f"{folder} has no chat template (chat_template.jinja, or chat_template in "
                         "tokenizer_config.json); steer-eval puts steering tokens inside the user turn of the model's "
                         "chat template, so give a model folder that has one (e.g. the instruction-tuned variant)")
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt"):
                    pass
            except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for every defect
                raise ModelError(f"{path} is not a readable safetensors file ({brief(error)}); restore the model "
                                 "folder (for the default model: steer-eval models fetch smollm2-135m)") from None


def weights_fingerprint(spec: str) -> str:
    """A hash of every file that makes the model answer as it does (all weights, not only the embeddings; config,
    tokenizer, chat template). Hashing reads the whole folder once; the result is kept in $STEER_EVAL_HOME keyed by
    the files' paths, sizes and modification times, so a later call on an unchanged folder reads no weights."""
    folder = _folder_of(spec).resolve()
    files = _identity_files(folder)
    if not any(path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf") for path in files):
        raise ModelError(f"{folder} holds no weight files (*.safetensors, *.bin, *.gguf); give a model folder")
    return remembered(f"weights {folder}", files, lambda: _hash_model_files(folder, files))


def _hash_model_files(folder: Path, files: list[Path]) -> str:
    _check_model_files(folder, files)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()[:16]


def model_label(spec: str) -> str:
    """The folder name steering tokens are stored under for this model (steer_eval/steering/shipped/<label>/steering_tokens)."""
    if spec in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[spec].hf_name
    return Path(spec.rstrip("/")).name


def load_model(spec: str, device: str | None = None, dtype: str = "auto"):
    """Load (model, tokenizer) for generation; the model is frozen and in eval mode."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise ModelError(f"could not load model {spec!r} ({brief(error)}); give a Hugging Face model folder "
                         "(config.json, weights, tokenizer) or an embedded model name") from None
    lm.eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


INPUT_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
OUTPUT_EMBEDDING_SUFFIXES = ("lm_head.weight", "embed_out.weight")


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no *.safetensors weights; the vLLM backend needs a safetensors model folder")
    return files


def find_tensor(folder: Path, suffixes: tuple[str, ...], required: bool) -> tuple[Path, str] | None:
    from safetensors import safe_open

    found = []
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as handle:
            found += [(path, key) for key in handle.keys() if key.endswith(suffixes)]
    if len(found) > 1 or (required and not found):
        raise ModelError(f"expected one tensor named *{' or *'.join(suffixes)} in {folder}, found "
                         f"{[key for _, key in found] or 'none'}")
    return found[0] if found else None


def read_input_embeddings(folder: str | Path) -> torch.Tensor:
    """The input-embedding matrix (vocab, hidden) straight from the weight files, without building the model."""
    from safetensors import safe_open

    path, key = find_tensor(Path(folder), INPUT_EMBEDDING_SUFFIXES, required=True)
    with safe_open(path, framework="pt") as handle:
        return handle.get_tensor(key)
