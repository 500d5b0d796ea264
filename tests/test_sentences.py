"""Sentence splitting on the labelled multilingual set (benchmarks/data/sentence_cases.jsonl) and its rules."""
import json
from pathlib import Path

import pytest

from steer_eval.scoring.verdict import verify
from steer_eval.scoring.sentences import count_sentences, split_sentences

DATA = Path(__file__).parents[1] / "benchmarks" / "data"
# sentence_cases_heldout.jsonl was written apart from the rules and first run once as a check (55/56; "No. No."
# then got its rule); both sets now guard against regressions.
CASES = [json.loads(line) for name in ("sentence_cases.jsonl", "sentence_cases_heldout.jsonl")
         for line in (DATA / name).read_text("utf-8").splitlines()]
STEERED_LANGUAGES = {"de", "fr", "es", "it", "pt"}
# Cases the rules get wrong, each for a stated reason; any other failure is a regression.
KNOWN_WRONG = {
    # In ALL-CAPS text a capital after "U.S." cannot tell a new sentence ("3 P.M. IT WAS") from a noun.
    "THE U.S. ECONOMY IS GROWING.",
}


def _lang(case):
    return case["lang"] if case["lang"] in STEERED_LANGUAGES else None


def test_the_labelled_set_covers_every_language_and_many_classes():
    assert len(CASES) >= 250
    assert {c["lang"] for c in CASES} >= STEERED_LANGUAGES | {"en"}
    assert len({c["class"] for c in CASES}) >= 30


@pytest.mark.parametrize("case", [c for c in CASES if c["text"] not in KNOWN_WRONG],
                         ids=lambda c: f"{c['lang']}-{c['class']}")
def test_labelled_case(case):
    assert count_sentences(case["text"], _lang(case)) == case["sentences"], split_sentences(case["text"], _lang(case))


def test_known_wrong_cases_are_still_in_the_set_and_still_wrong():
    known = [c for c in CASES if c["text"] in KNOWN_WRONG]
    assert len(known) == len(KNOWN_WRONG)
    assert all(count_sentences(c["text"], _lang(c)) != c["sentences"] for c in known)


@pytest.mark.parametrize("text, lang, expected", [
    ("Wir essen Obst, z.B. Äpfel. Das ist gesund.", "de", 2),
    ("Am 3. Oktober feiern wir. Es ist ein Feiertag.", "de", 2),
    ("Im 19. Jahrhundert gab es viel.", "de", 1),
    ("Im Jahr 2019. Dann kam mehr.", "de", 2),  # four digits: a year, not an ordinal
    ("El Sr. García llegó. Luego se fue.", "es", 2),
    ("No. No es cierto.", "es", 2),  # "No." is an abbreviation only in English rules
    ("See No. 5 in the list.", None, 1),
    ("I said no. Then I left.", None, 2),
    ('He asked, "Why?" and left.', None, 1),
    ("Il a demandé : « Pourquoi ? » et il est parti.", "fr", 1),
    ("Il a demandé : « Pourquoi ? » Il est parti.", "fr", 2),
    ("I waited... and then it rained.", None, 1),
    ("I waited... Then it rained.", None, 2),
    ("J. K. Rowling wrote it. It sold well.", None, 2),
    ("He moved to the U.S. Last year he came back.", None, 2),
    ("We bought apples, pears, etc. Then we left.", None, 2),
    ("We bought apples, pears, etc. and left.", None, 1),
    ("i went home. then i slept.", None, 2),  # lowercase answers still split at ". "
    ("so did i. then we left.", None, 2),
    ("```json\n{\"answer\": 1}\n```", None, 1),
    ("今日は晴れです。明日は雨です。", None, 2),
])
def test_rule(text, lang, expected):
    assert count_sentences(text, lang) == expected


def test_verify_splits_by_the_language_the_composition_asks_for():
    text = "Im 19. Jahrhundert gab es viel. Dann kam mehr."
    assert verify(["german", "sentences_2"], text).per_behavior["sentences_2"]
    assert not verify(["sentences_2"], text).per_behavior["sentences_2"]  # English rules: "19." ends a sentence
