"""Judging a response against ordered behaviours; the verdict carries the scorer spec that produced it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steer_eval import __version__
from steer_eval.scoring.behaviors import Behavior, resolve
from steer_eval.scoring.sentences import count_sentences
from steer_eval.scoring.verifiers import _first_alphanumeric, count_words, detect_language, is_json_answer, run_verifier

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
    return Verdict({b.id: run_verifier(b.verifier, text, params) for b, params in _checks(behaviors)})


def _checks(behaviors: Sequence[str | Behavior]) -> list[tuple[Behavior, dict]]:
    """Each behaviour with the parameters its verifier runs with: sentences in the composition's language."""
    resolved = resolve([b.id if isinstance(b, Behavior) else b for b in behaviors])
    language = next((b.params["lang"] for b in resolved if b.verifier == "is_language"), None)
    return [(b, {**b.params, "lang": language} if b.verifier == "has_sentences" and language else b.params)
            for b in resolved]


def explain(behaviors: Sequence[str | Behavior], text: str) -> dict[str, str]:
    """Per behaviour, what its verifier measured in `text` and what the behaviour needs ("57 words, needs 10-50",
    "language it, needs de"): the words beside a verdict on the results page. The same rules as `verify` (sentences
    in the composition's language), from the verifiers' own measuring functions."""
    return {b.id: _reason(b.verifier, params, text) for b, params in _checks(behaviors)}


def _first(text: str, wrong) -> str:
    found = next(((position, char) for position, char in enumerate(text, 1) if wrong(char)), None)
    return f"{found[1]!r} at character {found[0]}" if found else ""


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _reason(verifier: str, params: dict, text: str) -> str:
    if verifier == "words_in_range":
        return f"{_count(count_words(text), 'word')}, needs {params['low']}-{params['high']}"
    if verifier == "is_language":
        return f"language {detect_language(text) or 'none (no letters)'}, needs {params['lang']}"
    if verifier == "has_sentences":
        return f"{_count(count_sentences(text, params.get('lang')), 'sentence')}, needs {params['n']}"
    if verifier in ("is_lowercase", "is_uppercase"):
        wanted = "lowercase" if verifier == "is_lowercase" else "uppercase"
        if not any(char.isupper() or char.islower() for char in text):
            return f"no cased letter, needs {wanted}"
        wrong = _first(text, str.isupper if wanted == "lowercase" else str.islower)
        return f"{'uppercase' if wanted == 'lowercase' else 'lowercase'} {wrong}, needs {wanted}" if wrong \
            else f"every letter {wanted}"
    if verifier == "is_title_case":
        for word in text.split():
            first = _first_alphanumeric(word)
            if first is not None and first.islower():
                return f"word {word[:30]!r} starts lowercase, needs every word capitalised"
        return ("every word capitalised" if run_verifier(verifier, text, params)
                else "no word starts uppercase, needs every word capitalised")
    if verifier == "is_json_answer":
        return ('a JSON object {"answer": ...}' if is_json_answer(text)
                else 'not a JSON object with the one key "answer"')
    return "holds" if run_verifier(verifier, text, params) else "fails"


def scorer_spec(behaviors: Sequence[str]) -> dict:
    """Written next to every result so any number can be regenerated: which verifier, which parameters."""
    return {"scorer": SCORER_NAME, "version": SCORER_VERSION, "package_version": __version__,
            "verifiers": [b.spec() for b in resolve(behaviors)]}
