"""Looking inside steering tokens: norms and training summaries, PCA, nearest vocabulary tokens, cosine similarities.

Everything is measured against the model's input-embedding matrix, read from its weight files alone (one tensor,
no model built), and every token is checked against that matrix's fingerprint before it is compared with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer_eval.report.plots import pyplot
from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS, CATEGORIES
from steer_eval.steering.model_store import ModelError
from steer_eval.steering.models import model_label, resolve_model_path
from steer_eval.steering.tokens import ModelIdentity, TokenError, TokenStore, default_tokens_dir

CATEGORY_COLORS = {category: f"C{i}" for i, category in enumerate(CATEGORIES)}
DATE_KEYS = ("date", "trained_at", "finished_at")  # the trainer records none yet; shown when a token carries one


@dataclass(frozen=True)
class TokenSet:
    """The steering tokens of one folder with the input-embedding matrix they were trained for."""
    model: str
    model_folder: Path
    tokens_dir: Path
    names: list[str]
    vectors: np.ndarray  # (tokens, hidden), float32
    metadata: list[dict]
    embedding: np.ndarray  # (vocabulary, hidden), float32

    @property
    def mean_row_norm(self) -> float:
        return float(np.linalg.norm(self.embedding, axis=1).mean())


def category(name: str) -> str:
    if name == AND_TOKEN:
        return "<and>"
    return BEHAVIORS[name].category if name in BEHAVIORS else "unknown"


def _registry_order(names: list[str]) -> list[str]:
    """Behaviours in registry order (categories stay together), then <and>, then names the registry lacks."""
    position = {name: i for i, name in enumerate([*BEHAVIORS, AND_TOKEN])}
    return sorted(names, key=lambda name: (position.get(name, len(position)), name))


def load_token_set(model: str, tokens_dir: str | Path | None = None, only: list[str] | None = None) -> TokenSet:
    """The folder's input-embedding tokens (`only`: these names, in the order given; default: all of them)."""
    from steer_eval.steering.models import read_input_embeddings

    folder = Path(resolve_model_path(model))
    if not folder.is_dir():
        raise ModelError(f"the tokens commands read the input embeddings from a local model folder, and {model!r} "
                         "is not one; pass an embedded model name or a downloaded folder with --model")
    weight = read_input_embeddings(folder)
    store = TokenStore(tokens_dir or default_tokens_dir(model_label(model)))
    # Input-embedding tokens only: caa/prosv vectors live in the residual stream, where embedding norms, nearest
    # vocabulary rows and the embedding PCA mean nothing.
    names = _registry_order([name for name in store.names() if "/" not in name])
    if not names:
        raise TokenError(f"no steering tokens in {store.directory}; pass --tokens-dir with a folder holding "
                         "<name>/vector.safetensors and metadata.json")
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise TokenError(f"no steering token {', '.join(map(repr, unknown))} in {store.directory}; "
                             f"tokens there: {', '.join(names)}")
        names = list(dict.fromkeys(only))
    expected = ModelIdentity.of(model_label(model), weight)
    tokens = [store.load(name, expected) for name in names]
    return TokenSet(model, folder, store.directory, names,
                    np.stack([t.vector.float().numpy() for t in tokens]), [t.metadata() for t in tokens],
                    weight.float().numpy())


def training_summary(metadata: dict) -> dict:
    """What metadata.json says about how a token was trained (None where it says nothing)."""
    config = metadata.get("training_config") or {}
    summary = config.get("summary") or {}
    date = next((source[key] for source in (summary, config, metadata) for key in DATE_KEYS if key in source), None)
    return {"stage": config.get("stage"), "trained_on": metadata.get("behaviors", []), "steps": summary.get("steps"),
            "examples": summary.get("examples"), "lr": config.get("lr"), "epochs": config.get("epochs"),
            "final_loss": summary.get("final_loss"), "val_loss": summary.get("val_loss"), "date": date}


def token_rows(tokens: TokenSet) -> list[dict]:
    mean_norm = tokens.mean_row_norm
    rows = []
    for name, vector, metadata in zip(tokens.names, tokens.vectors, tokens.metadata):
        norm = float(np.linalg.norm(vector))
        rows.append({"name": name, "category": category(name), "norm": round(norm, 4),
                     "norm_vs_mean_row": round(norm / mean_norm, 4), **training_summary(metadata)})
    return rows


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def list_markdown(tokens: TokenSet) -> str:
    lines = [f"{len(tokens.names)} steering tokens in {_relative(tokens.tokens_dir)} for {tokens.model}; "
             f"input-embedding matrix {tokens.embedding.shape[0]:,} × {tokens.embedding.shape[1]}, mean row norm "
             f"{tokens.mean_row_norm:.4f}", "",
             "| token | category | norm | norm / mean row | stage | steps | examples | lr | epochs | final loss "
             "| val loss | date |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in token_rows(tokens):
        lines.append(f"| {r['name']} | {r['category']} | {r['norm']:.3f} | {r['norm_vs_mean_row']:.3f} | "
                     f"{_cell(r['stage'])} | {_cell(r['steps'])} | {_cell(r['examples'])} | {_cell(r['lr'])} | "
                     f"{_cell(r['epochs'])} | {_cell(r['final_loss'])} | {_cell(r['val_loss'])} | "
                     f"{_cell(r['date'])} |")
    return "\n".join(lines)


def list_json(tokens: TokenSet) -> str:
    return json.dumps({"model": tokens.model, "tokens_dir": str(tokens.tokens_dir),
                       "vocabulary": int(tokens.embedding.shape[0]), "hidden_size": int(tokens.embedding.shape[1]),
                       "mean_row_norm": round(tokens.mean_row_norm, 4), "tokens": token_rows(tokens)}, indent=2)


# --- geometry ---------------------------------------------------------------------------------------------------

def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    unit = _unit_rows(np.asarray(vectors, dtype=np.float64))
    return np.clip(unit @ unit.T, -1.0, 1.0)


@dataclass(frozen=True)
class PCA:
    mean: np.ndarray
    components: np.ndarray  # (2, hidden), unit rows
    explained: np.ndarray  # share of the variance along each component

    def project(self, matrix: np.ndarray) -> np.ndarray:
        return (np.asarray(matrix, dtype=np.float64) - self.mean) @ self.components.T


def pca_2d(vectors: np.ndarray) -> PCA:
    """The top two principal axes of the vectors; each axis's sign makes its largest loading positive."""
    data = np.asarray(vectors, dtype=np.float64)
    mean = data.mean(axis=0)
    _, singular, right = np.linalg.svd(data - mean, full_matrices=False)
    components = right[:2].copy()
    for axis in components:
        if axis[np.argmax(np.abs(axis))] < 0:
            axis *= -1
    variance = singular ** 2
    total = variance.sum()
    explained = variance[:2] / total if total > 0 else np.zeros(2)
    return PCA(mean, components, np.pad(explained, (0, 2 - len(explained))))


def nearest_ids(vectors: np.ndarray, embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k vocabulary rows of highest cosine to each vector: (ids, cosines), both (vectors, k), best first."""
    similarity = _unit_rows(np.asarray(vectors, dtype=np.float32)) @ _unit_rows(embedding.astype(np.float32)).T
    k = min(k, embedding.shape[0])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, axis=1)
    return ids, np.take_along_axis(similarity, ids, axis=1)


def nearest_tokens(tokens: TokenSet, k: int) -> dict[str, list[tuple[int, str, float]]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokens.model_folder)
    ids, cosines = nearest_ids(tokens.vectors, tokens.embedding, k)
    return {name: [(int(i), tokenizer.decode([int(i)]), float(c)) for i, c in zip(row_ids, row_cos)]
            for name, row_ids, row_cos in zip(tokens.names, ids, cosines)}


def _shown(text: str) -> str:
    """A decoded piece readable in a markdown table: whitespace visible, pipes and backticks harmless."""
    quoted = json.dumps(text, ensure_ascii=False)
    return "`" + quoted.replace("`", "'").replace("|", "\\|") + "`"


def nearest_markdown(nearest: dict[str, list[tuple[int, str, float]]]) -> str:
    lines = ["| token | nearest vocabulary tokens (cosine) |", "|---|---|"]
    for name, found in nearest.items():
        lines.append(f"| {name} | " + ", ".join(f"{_shown(text)} {cos:.3f}" for _, text, cos in found) + " |")
    return "\n".join(lines)


def _two_places(value: float) -> str:
    return f"{round(float(value), 2) + 0.0:.2f}"  # + 0.0: no "-0.00" for a tiny negative


def cosine_markdown(names: list[str], matrix: np.ndarray) -> str:
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {name} | " + " | ".join(_two_places(value) for value in row) + " |"
              for name, row in zip(names, matrix)]
    return "\n".join(lines)


def and_orthogonality(names: list[str], matrix: np.ndarray, metadata: list[dict]) -> str | None:
    """One line on how close to orthogonal <and> is to the behaviour tokens, split by what <and> was trained with."""
    if AND_TOKEN not in names:
        return None
    row = matrix[names.index(AND_TOKEN)]
    trained_with = set(metadata[names.index(AND_TOKEN)].get("behaviors", []))
    parts = []
    for label, group in (("behaviours <and> was trained with", trained_with),
                         ("the other behaviour tokens", set(names) - trained_with - {AND_TOKEN})):
        values = [(abs(row[names.index(n)]), n) for n in group if n in names]
        if values:
            worst = max(values)
            parts.append(f"{label} ({len(values)}): mean |cos| {np.mean([v for v, _ in values]):.3f}, "
                         f"max {worst[0]:.3f} ({worst[1]})")
    return "<and> vs " + "; vs ".join(parts)


# --- plots ------------------------------------------------------------------------------------------------------

def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    pyplot().close(figure)
    return path


_LABEL_OFFSETS = ((5, 4), (5, -11), (-5, 4), (-5, -11), (5, 12), (-5, -19))  # points; left ones end at the dot


def _label_points(axis, names: list[str], points: np.ndarray, fontsize: float = 8) -> None:
    """Name every point, each label at the offset that overlaps the labels already placed least (clusters stay
    legible: near-identical tokens such as sentences_2..5 sit almost on one spot)."""
    axis.autoscale_view()
    scale = axis.figure.dpi / 72
    anchors = axis.transData.transform(points)
    radius = 4 * scale
    placed = [(x - radius, y - radius, x + radius, y + radius) for x, y in anchors]  # the dots themselves
    for name, (x, y), point in zip(names, anchors, points):
        width, height = 0.6 * fontsize * len(name) * scale, fontsize * scale

        def box(offset):
            left = x + offset[0] * scale - (width if offset[0] < 0 else 0)
            bottom = y + offset[1] * scale
            return left, bottom, left + width, bottom + height

        def overlap(candidate):
            return sum(max(0, min(candidate[2], b[2]) - max(candidate[0], b[0])) *
                       max(0, min(candidate[3], b[3]) - max(candidate[1], b[1])) for b in placed)

        offset = min(_LABEL_OFFSETS, key=lambda o: overlap(box(o)))
        placed.append(box(offset))
        axis.annotate(name, point, xytext=offset, textcoords="offset points", fontsize=fontsize, zorder=5,
                      ha="right" if offset[0] < 0 else "left")


def pca_figure(tokens: TokenSet, vocabulary_points: int = 3000, seed: int = 0):
    """Tokens on their own top two principal axes, coloured by category; a sample of vocabulary rows behind them."""
    plt = pyplot()
    pca = pca_2d(tokens.vectors)
    points = pca.project(tokens.vectors)
    figure, axis = plt.subplots(figsize=(9, 7))
    if vocabulary_points > 0:
        rows = np.random.default_rng(seed).choice(tokens.embedding.shape[0],
                                                  min(vocabulary_points, tokens.embedding.shape[0]), replace=False)
        cloud = pca.project(tokens.embedding[rows])
        axis.scatter(cloud[:, 0], cloud[:, 1], s=4, color="0.75", alpha=0.5, linewidths=0,
                     label=f"vocabulary embeddings ({len(rows):,} of {tokens.embedding.shape[0]:,})")
    categories = [category(name) for name in tokens.names]
    for group in [*CATEGORIES, "unknown"]:
        chosen = [i for i, c in enumerate(categories) if c == group]
        if chosen:
            axis.scatter(points[chosen, 0], points[chosen, 1], s=60, color=CATEGORY_COLORS.get(group, "C9"),
                         edgecolors="black", linewidths=0.5, label=group, zorder=3)
    if AND_TOKEN in tokens.names:
        i = tokens.names.index(AND_TOKEN)
        axis.scatter(points[i, 0], points[i, 1], s=260, marker="*", color="black", label=AND_TOKEN, zorder=4)
    _label_points(axis, tokens.names, points)
    axis.set_xlabel(f"PC1 ({100 * pca.explained[0]:.1f}% of the tokens' variance)")
    axis.set_ylabel(f"PC2 ({100 * pca.explained[1]:.1f}% of the tokens' variance)")
    axis.set_title(f"Steering tokens of {model_label(tokens.model)}: PCA of {len(tokens.names)} vectors")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best", markerscale=1.0)
    figure.tight_layout()
    return figure


def cosine_figure(names: list[str], matrix: np.ndarray, title: str):
    plt = pyplot()
    size = max(6.0, 0.42 * len(names) + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    image = axis.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(j, i, _two_places(value), ha="center", va="center", fontsize=6,
                      color="white" if abs(value) > 0.6 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="cosine similarity")
    axis.set_title(title)
    return figure


def write_pca(tokens: TokenSet, path: str | Path, vocabulary_points: int = 3000) -> Path:
    return _save(pca_figure(tokens, vocabulary_points), path)


def write_cosine(tokens: TokenSet, path: str | Path) -> Path:
    title = f"Cosine similarity between the steering tokens of {model_label(tokens.model)}"
    return _save(cosine_figure(tokens.names, cosine_matrix(tokens.vectors), title), path)
