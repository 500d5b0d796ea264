"""Judging a response against ordered behaviours; the verdict carries the scorer spec that produced it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steer_eval import __version__
from steer_eval.scoring.behaviors import Behavior, resolve
from steer_eval.scoring.verifiers import run_verifier

# Bump when a verifier's rule changes: a run's verdicts are only comparable under one version.
# 2: language-aware, linear-time sentences; `regex` word characters; strict JSON; <language ID change>.
SCORER_VERSION = 2
SCORER_NAME = "steer_eval.scoring.verify"  # what records judged by these verifiers name as their scorer


@dataclass(frozen=True)
class Verdict:
    per_behavior: dict[str, bool]

    @property
    def followed(self) -> bool:
        """A composition is followed only when every behaviour's verifier holds."""
        return all(self.per_behavior.values())

    def as_dict(self) -> dict:
        return {"followed": self.followed, "per_behavior": dict(self.per_behavior)}


def verify(behaviors: Sequence[str | Behavior], text: str) -> Verdict:
    """Each behaviour's verifier on `text`; sentences are split by the rules of the language the composition
    asks for (German abbreviations in `german + sentences_3`), English rules when it asks for none."""
    resolved = resolve([b.id if isinstance(b, Behavior) else b for b in behaviors])
    language = next((b.params["lang"] for b in resolved if b.verifier == "is_language"), None)
    return Verdict({b.id: run_verifier(b.verifier, text, _with_language(b, language)) for b in resolved})


def _with_language(behavior: Behavior, language: str | None) -> dict:
    if behavior.verifier == "has_sentences" and language:
        return {**behavior.params, "lang": language}
    return behavior.params


def scorer_spec(behaviors: Sequence[str]) -> dict:
    """Written next to every result so any number can be regenerated: which verifier, which parameters."""
    return {"scorer": SCORER_NAME, "version": SCORER_VERSION, "package_version": __version__,
            "verifiers": [b.spec() for b in resolve(behaviors)]}
