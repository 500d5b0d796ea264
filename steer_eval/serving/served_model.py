"""What a steering server serves: every steering token of one store in a spare row of one engine, fixed for the
server's life, and the served model folder whose tokenizer knows each token as a special token `<steer:NAME>`.

The rows are those of the vLLM backend (backends/extended_vocab.py), filled the same way (`InputEmbeddings.spare_row`)
and masked from sampling by the same worker extension, so a request reaches the engine as plain token ids. Rows are
assigned in the store's name order; they never change while the server runs, so the prefix cache stays valid.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steer_eval import __version__
from steer_eval.backends.vllm import VLLMBackend
from steer_eval.errors import UserError
from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS
from steer_eval.steering.model_store import home
from steer_eval.steering.models import weights_fingerprint
from steer_eval.steering.tokens import TokenStore, folder_name

TOKENIZER_FILE = "tokenizer.json"


def token_text(name: str) -> str:
    """The served tokenizer's text for a steering token: '<steer:german>', '<steer:and>'."""
    return f"<steer:{folder_name(name)}>"


@dataclass
class ServedSteering:
    """The server's steering state: which engine id each token has, and what a client may record about it."""
    backend: VLLMBackend  # its tokenizer assembles prompts; its engine is never started (vLLM's server runs its own)
    token_ids: dict[str, int]  # token name -> the engine id of its spare row
    fingerprints: dict[str, str]  # token name -> vector fingerprint
    rows: list[list[float]]  # what each spare row holds, in token_ids' order (InputEmbeddings.spare_row)
    folder: Path  # the served model folder: the extended model, its tokenizer with the steering tokens added
    steering_in_text: bool = False  # whether `<steer:NAME>` written in a message steers (else it is refused)
    dtype: str | None = None  # the engine's, once it runs
    engine_identity: dict = field(default_factory=dict)

    @property
    def original_vocab_size(self) -> int:
        return self.backend.extended.vocab_size

    @property
    def texts(self) -> dict[str, str]:
        return {token_text(name): name for name in self.token_ids}

    def provenance(self) -> dict:
        """GET /v1/steering: what the server steers with, and the engine's identity as a grid's manifest has it."""
        behaviours = [{"id": b.id, "category": b.category, "unseen": b.unseen, "description": b.description,
                       **self._token(b.id)} for b in BEHAVIORS.values() if b.id in self.token_ids]
        composition = self._token(AND_TOKEN) if AND_TOKEN in self.token_ids else None
        return {"behaviors": behaviours, "and": composition, "engine": self.engine_identity,
                "steering_in_text": self.steering_in_text,
                "fields": {"steering": "behaviour ids in order, <and> between them for composition",
                           "control_method": ["steering", "text", "hybrid"],
                           "mode": ["composition", "concatenation", "native_and"], "paraphrase_seed": "integer"}}

    def _token(self, name: str) -> dict:
        """A token as a client may use it: its text (with --steering-in-text), its engine id (a prompt of ids),
        and the fingerprint to record."""
        return {"token": token_text(name), "token_id": self.token_ids[name], "fingerprint": self.fingerprints[name]}

    def started(self, dtype: str) -> None:
        """The engine runs: its dtype completes the identity (as `SteeringBackend.fingerprint` composes it)."""
        self.dtype = dtype.removeprefix("torch.")
        backend = self.backend
        weights = weights_fingerprint(backend.model_spec)
        self.engine_identity = {
            "model": backend.model_spec, "backend": "vllm", "dtype": self.dtype,
            "weights": weights, "embeddings": backend.identity.fingerprint,
            "model_fingerprint": f"{weights}/{backend.identity.fingerprint}/{self.dtype}",
            "spare_rows": backend.extended.spare_rows, "steer_eval_version": __version__,
            "vllm_version": _vllm_version()}


def _vllm_version() -> str:
    import vllm
    return vllm.__version__


def served_token_names(store: TokenStore, spare_rows: int) -> list[str]:
    """Every steering token of the store (activation vectors are not tokens); refused in one line when there are
    none or more than the spare rows."""
    names = [name for name in store.names() if "/" not in name and " (unreadable" not in name]
    if not names:
        raise UserError(f"{store.directory} holds no steering tokens; point --tokens-dir at a folder of trained "
                        "tokens (python trainers/train.py ...)")
    if len(names) > spare_rows:
        raise UserError(f"{len(names)} steering tokens in {store.directory} but {spare_rows} spare rows; pass "
                        f"--spare-rows {len(names)} (or more)")
    return names


def serve_steering(backend: VLLMBackend, steering_in_text: bool = False) -> ServedSteering:
    """Every steering token of the backend's store, checked against the model, in a spare row each."""
    names = served_token_names(backend.store, backend.extended.spare_rows)
    tokens = {name: backend.store.load(name, backend.identity) for name in names}  # each file read once
    token_ids = {name: backend.extended.row_id(index) for index, name in enumerate(names)}
    fingerprints = {name: token.fingerprint for name, token in tokens.items()}
    rows = [backend.embeddings.spare_row(tokens[name].vector).tolist() for name in names]
    folder = served_folder(backend.extended.folder, token_ids)
    return ServedSteering(backend, token_ids, fingerprints, rows, folder, steering_in_text)


def served_folder(extended: Path, token_ids: dict[str, int]) -> Path:
    """The extended model folder with a tokenizer that knows `<steer:NAME>` at each token's row id (built once,
    under $STEER_EVAL_HOME/served/, every other file a link to the extended folder's)."""
    key = hashlib.sha256(json.dumps([str(extended), sorted(token_ids.items())]).encode()).hexdigest()[:12]
    target = home() / "served" / f"{extended.name}-{key}"
    if (target / TOKENIZER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for path in extended.iterdir():
            if path.name != TOKENIZER_FILE:
                os.symlink(path.resolve(), building / path.name)
        tokenizer = json.loads((extended / TOKENIZER_FILE).read_text(encoding="utf-8"))
        taken = {entry["id"] for entry in tokenizer.get("added_tokens", [])}
        clash = sorted(set(token_ids.values()) & taken)
        if clash:
            raise UserError(f"{extended}'s tokenizer already has tokens at ids {clash[:5]}, the spare rows")
        tokenizer.setdefault("added_tokens", []).extend(
            {"id": token_id, "content": token_text(name), "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for name, token_id in token_ids.items())
        (building / TOKENIZER_FILE).write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        if target.exists():  # another process built it meanwhile
            shutil.rmtree(building)
        else:
            os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target
