"""Steering tokens as values (name, vector, metadata) and their on-disk store (safetensors + JSON)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steer_eval.steering.activation import Intervention
from steer_eval.errors import UserError, brief

VECTOR_FILE = "vector.safetensors"
METADATA_FILE = "metadata.json"
SHIPPED_TOKENS_ROOT = Path(__file__).resolve().parent / "shipped"  # package data: <model label>/steering_tokens/


class TokenError(UserError, RuntimeError):
    """A user-facing problem with steering-token files."""


@dataclass(frozen=True, eq=False)
class ModelIdentity:
    """What a steering vector is only valid for: a model's input-embedding space."""
    model_id: str
    hidden_size: int
    fingerprint: str

    @classmethod
    def of(cls, model_id: str, embedding_weight: torch.Tensor) -> "ModelIdentity":
        return cls(model_id, int(embedding_weight.shape[1]), embedding_fingerprint(embedding_weight))

    def describe(self) -> str:
        return f"{self.model_id} (hidden size {self.hidden_size}, embedding fingerprint {self.fingerprint})"

    def matches(self, other: "ModelIdentity") -> bool:
        return self.hidden_size == other.hidden_size and self.fingerprint == other.fingerprint


def embedding_fingerprint(embedding_weight: torch.Tensor) -> str:
    """A hash of the input-embedding matrix, rounded to bf16 so fp32/bf16 loads of one model agree."""
    as_bf16 = embedding_weight.detach().to("cpu", torch.bfloat16).contiguous()
    return hashlib.sha256(as_bf16.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


def vector_fingerprint(vector: torch.Tensor) -> str:
    """A hash of a steering vector's exact values (float32): a retrained token gets a new fingerprint."""
    values = vector.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(values.numpy().tobytes()).hexdigest()[:16]


@dataclass(eq=False)
class SteeringToken:
    name: str
    vector: torch.Tensor
    behaviors: tuple[str, ...]
    model: ModelIdentity
    training_config: dict = field(default_factory=dict)
    intervention: Intervention | None = None  # None: an input-embedding steering token; else a caa/prosv vector

    def __post_init__(self):
        if self.vector.ndim != 1:
            raise TokenError(f"steering token {self.name!r} must be a 1-D vector, got shape {tuple(self.vector.shape)}")
        if self.vector.shape[0] != self.model.hidden_size:
            raise TokenError(f"steering token {self.name!r} has {self.vector.shape[0]} dims but "
                             f"{self.model.describe()} needs {self.model.hidden_size}")

    @property
    def fingerprint(self) -> str:
        """The vector's hash; for a caa/prosv vector also where and how strongly it is added (a new multiplier
        with the same mean difference is another vector to a run identity)."""
        if self.intervention is None:
            return vector_fingerprint(self.vector)
        where = json.dumps(self.intervention.to_json(), sort_keys=True)
        return hashlib.sha256(f"{vector_fingerprint(self.vector)}:{where}".encode()).hexdigest()[:16]

    def __eq__(self, other) -> bool:
        return (isinstance(other, SteeringToken) and self.name == other.name
                and self.vector.dtype == other.vector.dtype and torch.equal(self.vector, other.vector)
                and self.metadata() == other.metadata())

    def metadata(self) -> dict:
        meta = {"name": self.name, "behaviors": list(self.behaviors), "model_id": self.model.model_id,
                "hidden_size": self.model.hidden_size, "dtype": str(self.vector.dtype).removeprefix("torch."),
                "embedding_fingerprint": self.model.fingerprint, "training_config": self.training_config}
        if self.intervention is not None:
            meta["intervention"] = self.intervention.to_json()
        return meta


def folder_name(token_name: str) -> str:
    """'<and>' is stored as 'and': angle brackets are awkward in paths and shells. 'caa/german' is a subfolder."""
    return token_name.strip("<>")


def default_tokens_dir(model_label: str) -> Path:
    root = Path(os.environ.get("STEER_EVAL_TOKENS_ROOT", SHIPPED_TOKENS_ROOT))
    return root / model_label / "steering_tokens"


class TokenStore:
    """Token folders under one directory: <directory>/<name>/{vector.safetensors, metadata.json}."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"TokenStore({str(self.directory)!r})"

    def path(self, name: str) -> Path:
        return self.directory / folder_name(name)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        found = []
        for folder in sorted(self.directory.iterdir()):
            # Activation vectors sit one level down (caa/german); a token folder never nests.
            for candidate in [folder] if (folder / METADATA_FILE).is_file() else sorted(folder.glob("*/")):
                if (candidate / METADATA_FILE).is_file():
                    found.append(self._stored_name(candidate))
        return found

    def _stored_name(self, folder: Path) -> str:
        try:
            return str(json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{folder.relative_to(self.directory)} (unreadable {METADATA_FILE})"

    def has(self, name: str) -> bool:
        return (self.path(name) / METADATA_FILE).is_file()

    def save(self, token: SteeringToken) -> Path:
        folder = self.path(token.name)
        folder.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so an interrupted save never leaves a half-written token behind.
        tmp_vector, tmp_meta = folder / (VECTOR_FILE + ".tmp"), folder / (METADATA_FILE + ".tmp")
        save_file({"vector": token.vector.detach().cpu().contiguous()}, tmp_vector)
        tmp_meta.write_text(json.dumps(token.metadata(), indent=2, sort_keys=True))
        os.replace(tmp_vector, folder / VECTOR_FILE)
        os.replace(tmp_meta, folder / METADATA_FILE)
        return folder

    def load(self, name: str, expected: ModelIdentity | None = None) -> SteeringToken:
        folder = self.path(name)
        if not self.has(name):
            available = ", ".join(self.names()) or "none"
            raise TokenError(f"no steering token {name!r} in {self.directory} (available: {available}); "
                             "train it with trainers/train.py or pass --tokens-dir pointing at its folder")
        try:
            meta = json.loads((folder / METADATA_FILE).read_text())
            vector = load_file(folder / VECTOR_FILE)["vector"]
            intervention = meta.get("intervention")
            token = SteeringToken(meta["name"], vector, tuple(meta["behaviors"]),
                                  ModelIdentity(meta["model_id"], int(meta["hidden_size"]),
                                                meta["embedding_fingerprint"]),
                                  meta.get("training_config", {}),
                                  Intervention.from_json(intervention) if intervention is not None else None)
        except (OSError, ValueError, KeyError, TypeError, UserError, SafetensorError) as error:
            raise TokenError(f"steering token files in {folder} are corrupt or incomplete ({brief(error)}); "
                             "delete the folder and train the token again") from None
        expected_kind = name.split("/")[0] if "/" in name else None
        kind = token.intervention.kind if token.intervention is not None else None
        if kind != expected_kind:
            what = f"a {kind} activation vector" if kind else "an input-embedding steering token"
            raise TokenError(f"{folder} holds {what}, not what the name {name!r} asks for; put steering tokens at "
                             "<tokens_dir>/<behaviour> and activation vectors at <tokens_dir>/<caa|prosv>/<behaviour>")
        if expected is not None and not token.model.matches(expected):
            raise TokenError(f"steering token {name!r} in {folder} was trained for {token.model.describe()}, "
                             f"but the model in use is {expected.describe()}; use tokens trained for this model "
                             "(--tokens-dir) or train new ones")
        return token


def load_vectors(store: TokenStore, names, expected: ModelIdentity | None = None) -> dict[str, torch.Tensor]:
    """name -> vector for every distinct name, checked against the model in use."""
    from steer_eval.scoring.behaviors import AND_TOKEN

    vectors = {}
    for name in dict.fromkeys(names):
        if name == AND_TOKEN and not store.has(name):
            raise TokenError(f"composition mode needs a trained {AND_TOKEN} token, but {store.directory} has none; "
                             "train it (python trainers/train.py --stage and ...), point --tokens-dir at a folder "
                             "that has one, or use mode concatenation or native_and")
        vectors[name] = store.load(name, expected).vector
    return vectors
