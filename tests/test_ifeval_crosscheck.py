"""Our verifiers against lm-eval's IFEval checkers (benchmarks/ifeval_crosscheck.py) on the shipped records."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[1]

# Agreement floors (%) per mapped behaviour family, each a little under the figure of scorer 2 on the 13,440 shipped
# records (results/ifeval_crosscheck/table.json): language 98.68 (py3langid vs IFEval's langdetect: every
# difference is classed; of 153 labelled by reading, ours was right on 126), words 100.00, case 99.93, sentences 98.69,
# json 99.87. Scorer 1 (results/ifeval_crosscheck/before_v1.json) had language 99.93 (the same detector), words
# 99.99, sentences 98.86.
AGREEMENT_FLOORS = {"language": 98.5, "words": 99.99, "case": 99.8, "sentences": 98.5, "json": 99.7}
# Disagreements no rule explains (class ours_suspect): 0 in that run; allow a few before failing.
MAX_OURS_SUSPECT = 5


@pytest.fixture(scope="module")
def crosscheck():
    from benchmarks import ifeval_crosscheck
    return ifeval_crosscheck


@pytest.mark.slow
def test_agreement_with_ifeval_stays_above_floors(crosscheck):
    labels = crosscheck.load_langdetect_labels()  # IFEval's langdetect answers for these texts, written earlier
    summary, disagreements = crosscheck.run(rev=None, workers=2, known_labels=labels)
    assert summary["records"] == 13440
    low = {family: summary["families"][family]["agree_pct"] for family, floor in AGREEMENT_FLOORS.items()
           if summary["families"][family]["agree_pct"] < floor}
    assert not low, f"agreement with IFEval below the floors {AGREEMENT_FLOORS}: {low}"
    suspects = [row for row in disagreements if row["class"] == "ours_suspect"]
    examples = "\n".join(f"{r['behavior']} ours={r['ours']} ifeval={r['ifeval']} {r['reason']}: "
                         f"{r['response'][:120]!r}" for r in suspects[:10])
    assert len(suspects) <= MAX_OURS_SUSPECT, f"{len(suspects)} unexplained disagreements:\n{examples}"
    assert {row["class"] for row in disagreements} <= set(crosscheck.CLASSES)


def test_ifeval_import_touches_no_network_and_no_pickle():
    """In a fresh interpreter (so IFEval's module really is imported): nltk.download, nltk.data.load and socket
    connections are recorded, not run; the loader must call none of them and count sentences without data."""
    probe = textwrap.dedent("""
        import json, socket, sys
        import nltk
        calls = []
        def record(name):
            def refuse(*args, **kwargs):
                calls.append(name)
                raise RuntimeError(name)
            return refuse
        nltk.download = record("nltk.download")
        nltk.data.load = record("nltk.data.load")
        socket.socket.connect = record("socket.connect")
        from benchmarks import ifeval_crosscheck as module
        assert "lm_eval.tasks.ifeval.instructions_util" not in sys.modules
        ifeval = module.load_ifeval()
        from nltk.tokenize.punkt import PunktSentenceTokenizer
        checker = ifeval.NumberOfSentences("n")
        checker.build_description(num_sentences=2, relation="at least")
        print(json.dumps({"calls": calls,
                          "imported": "lm_eval.tasks.ifeval.instructions_util" in sys.modules,
                          "untrained": type(ifeval.instructions_util._get_sentence_tokenizer()).__name__,
                          "two_sentences": checker.check_following("One here. Two there."),
                          "one_sentence": checker.check_following("Only one here.")}))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"calls": [], "imported": True, "untrained": "PunktSentenceTokenizer",
                      "two_sentences": True, "one_sentence": False}


def test_every_rule_states_a_class_and_reason(crosscheck):
    cases = [("german", "", False, True), ("lowercase", "ceci est une phrase en français", True, False),
             ("json", '"just a string"', False, True), ("sentences_1", "- apples\n- pears", False, True),
             ("words_10_50", "one two", True, False)]
    ours = crosscheck.load_ours(None)
    crosscheck.load_ifeval()
    for behavior, text, mine, theirs in cases:
        cls, reason = crosscheck.classify(behavior, text, None, mine, theirs, ours)
        assert cls in crosscheck.CLASSES and reason, (behavior, cls, reason)
    assert crosscheck.classify("german", "", None, False, True, ours)[0] == "deliberate"
    assert crosscheck.classify("lowercase", "ceci est une phrase en français", None, True, False, ours)[0] \
        == "deliberate"
    assert crosscheck.classify("json", '"just a string"', None, False, True, ours)[0] == "deliberate"
    assert crosscheck.classify("sentences_1", "- apples\n- pears", None, False, True, ours)[0] == "boundary"
    assert crosscheck.classify("words_10_50", "one two", None, True, False, ours)[0] == "ours_suspect"


def test_the_stored_langdetect_labels_are_what_langdetect_says(crosscheck):
    """A fresh random sample of the shipped responses (1 in 40), detected again: a changed langdetect or changed
    records show here (rewrite with `python benchmarks/ifeval_crosscheck.py --write-langdetect-labels`)."""
    import random

    import langdetect
    langdetect.DetectorFactory.seed = 0
    labels = crosscheck.load_langdetect_labels()
    texts = sorted({record["response"] for _, record in crosscheck.read_records(crosscheck.RECORDS)})
    assert {crosscheck.text_key(text) for text in texts} == set(labels)
    seed = random.randrange(1 << 30)
    sample = random.Random(seed).sample(texts, len(texts) // 40)
    wrong = [text[:80] for text in sample if crosscheck.detect_or_none(text) != labels[crosscheck.text_key(text)]]
    assert not wrong, f"seed {seed}: langdetect now says otherwise of {len(wrong)} texts, e.g. {wrong[:3]}"

