"""Cross-check our verifiers against the IFEval checkers shipped in lm-eval (lm_eval/tasks/ifeval/instructions.py).

Every response in results/token_eval/records.tar.gz is judged on EVERY mapped behaviour (not only the ones its
record asked for) by our verifier and by IFEval's checker(s); every disagreement is put in one class by small
pure rules (``RULES`` below, first match wins; each states its reason):

* deliberate   -- a documented difference between the two definitions
* boundary     -- a convention difference where neither side is wrong (line breaks, fences, ellipses)
* ifeval_quirk -- IFEval is wrong by its own definition (e.g. Punkt splitting after "Dr.")
* ours_suspect -- unexplained: a human must look at these

Mapping (ours -> IFEval): words_L_H -> NumberOfWords(L, "at least") and NumberOfWords(H+1, "less than");
language X -> ResponseLanguageChecker(X); lowercase -> LowercaseLettersEnglishChecker; uppercase ->
CapitalLettersEnglishChecker; sentences_N -> NumberOfSentences(N, "at least") and (N+1, "less than");
json -> JsonFormat; title_case has no IFEval counterpart (reported as unmapped).

Approximations (also written into table.md):
* IFEval's count_sentences loads nltk's pickled english Punkt model; we never unpickle and cannot download, so
  it gets nltk's PunktSentenceTokenizer() with default (untrained) parameters instead.
* Our sentences_N gets the record's language (as steer_eval.scoring.verdict.verify does); Punkt is English-only.

Usage:  .venv/bin/python benchmarks/ifeval_crosscheck.py [--ours-from-git REV] [--summary-json PATH]
"""
from __future__ import annotations

import argparse, collections, functools, gzip, hashlib, importlib, importlib.machinery, importlib.metadata
import importlib.util, io, json
import multiprocessing, re, subprocess, sys, tarfile
import inspect, logging, tempfile, time, types
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results/token_eval/records.tar.gz"
OUT_DIR = REPO / "results/ifeval_crosscheck"
CLASSES = ("deliberate", "boundary", "ifeval_quirk", "ours_suspect")
LANGUAGES = {"german": "de", "spanish": "es", "french": "fr", "italian": "it", "portuguese": "pt"}
WORDS = {f"words_{lo}_{hi}": (lo, hi) for lo, hi in ((10, 50), (50, 70), (70, 90), (90, 120))}
SENTENCES = {f"sentences_{n}": n for n in range(1, 6)}
MAPPED = [*LANGUAGES, *WORDS, "lowercase", "uppercase", *SENTENCES, "json"]
UNMAPPED = ["title_case"]
FAMILY = {**{b: "language" for b in LANGUAGES}, **{b: "words" for b in WORDS}, "lowercase": "case",
          "uppercase": "case", **{b: "sentences" for b in SENTENCES}, "json": "json", "title_case": "title_case"}
APPROXIMATIONS = [
    "IFEval count_sentences: nltk PunktSentenceTokenizer() with default (untrained) parameters instead of the "
    "pickled english Punkt model (never unpickled, cannot be downloaded here); untrained Punkt knows no "
    "abbreviations.",
    "Our sentences_N is judged with the record's requested language (as scoring.verify does); Punkt is English.",
    "langdetect's global DetectorFactory.seed is set to 0 for IFEval's checkers (IFEval itself leaves it unset).",
]


# ---------------------------------------------------------------- loading both sides
@functools.lru_cache(maxsize=1)
def untrained_punkt():
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    return PunktSentenceTokenizer()  # default parameters: no data file, nothing unpickled


def load_ifeval():
    """IFEval's instructions module, imported without network and without unpickling.

    instructions_util runs download_nltk_resources() at import: nltk.data.find("tokenizers/punkt_tab"), then
    nltk.download("punkt_tab") when that data is missing. During the import, find() reports the resource as
    present and download() raises, so a changed lm-eval that would still reach the network fails loudly instead.
    Afterwards _get_sentence_tokenizer (which would nltk.data.load a pickle) is replaced by untrained Punkt.
    """
    import langdetect, nltk

    def refuse(*args, **kwargs):
        raise RuntimeError(f"nltk.download{args} called while importing IFEval (network is off limits)")

    with mock.patch.object(nltk.data, "find", return_value="(not needed)"), \
            mock.patch.object(nltk, "download", side_effect=refuse):
        instructions = importlib.import_module("lm_eval.tasks.ifeval.instructions")
    instructions.instructions_util._get_sentence_tokenizer = untrained_punkt
    langdetect.DetectorFactory.seed = 0  # IFEval calls langdetect.detect with the global factory
    # With the seed fixed, detect() is a pure function of the text, so a cache changes no verdict; IFEval's 5
    # language checkers and 2 case checkers then cost one detection per text instead of up to 7.
    instructions.langdetect = types.SimpleNamespace(detect=cached_detect,
                                                    LangDetectException=langdetect.LangDetectException)
    # IFEval logs every detection failure at ERROR level (thousands of lines here); they are counted instead.
    logging.getLogger(instructions.__name__).setLevel(logging.CRITICAL)
    return instructions


# What langdetect said (seed 0) of each shipped response, written by --write-langdetect-labels: over half of a run's
# time is IFEval's langdetect, whose answers for fixed texts are fixed; the test checks a fresh sample against it.
LANGDETECT_LABELS = REPO / "benchmarks/data/langdetect_labels.json.gz"
_KNOWN_LABELS: dict[str, str | None] = {}  # text key -> label (None: langdetect raised)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def load_langdetect_labels(path: Path = LANGDETECT_LABELS) -> dict[str, str | None]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return json.load(file)["labels"]


def detect_or_none(text: str, detect=None) -> str | None:
    """langdetect's label of `text` (live unless `detect` says otherwise), None where it cannot tell."""
    import langdetect
    try:
        return (detect or langdetect.detect)(text)
    except langdetect.LangDetectException:
        return None


@functools.lru_cache(maxsize=1 << 15)
def cached_detect(text):
    import langdetect
    key = text_key(text)
    if key not in _KNOWN_LABELS:
        return langdetect.detect(text)
    if _KNOWN_LABELS[key] is None:
        raise langdetect.LangDetectException(langdetect.lang_detect_exception.ErrorCode.CantDetectError,
                                             "no features in text (stored label)")
    return _KNOWN_LABELS[key]


def write_langdetect_labels(records_path: Path = RECORDS, out: Path = LANGDETECT_LABELS) -> int:
    import langdetect
    langdetect.DetectorFactory.seed = 0
    texts = sorted({record["response"] for _, record in read_records(records_path)})
    labels = {text_key(text): detect_or_none(text) for text in texts}
    with gzip.open(out, "wt", encoding="utf-8") as file:
        json.dump({"langdetect": importlib.metadata.version("langdetect"), "seed": 0, "labels": labels}, file)
    return len(labels)


def load_ours(rev: str | None):
    """steer_eval.scoring.verifiers from the working tree (rev None) or as it was at git revision ``rev``.

    For a revision the steer_eval/ package at rev is extracted (git archive, read-only) into a temp folder and
    imported there with the installed steer_eval modules set aside, so verifiers.py gets its own revision's
    helpers (sentences.py); the installed modules are put back afterwards."""
    if rev is None:
        return importlib.import_module("steer_eval.scoring.verifiers")
    archive = subprocess.run(["git", "archive", rev, "steer_eval"], cwd=REPO, capture_output=True, check=True)
    mine = lambda name: name == "steer_eval" or name.startswith("steer_eval.")
    saved = {name: module for name, module in sys.modules.items() if mine(name)}
    with tempfile.TemporaryDirectory() as folder:
        tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(folder, filter="data")
        for name in saved:
            del sys.modules[name]
        try:
            # The revision's package, found in that folder only (sys.path untouched): its submodules follow it.
            spec = importlib.machinery.PathFinder.find_spec("steer_eval", [folder])
            package = sys.modules["steer_eval"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(package)
            layered = (Path(folder) / "steer_eval" / "scoring" / "verifiers.py").exists()  # else before the layers
            return importlib.import_module("steer_eval.scoring.verifiers" if layered else "steer_eval.verifiers")
        finally:
            for name in [name for name in sys.modules if mine(name)]:
                del sys.modules[name]
            sys.modules.update(saved)


# ---------------------------------------------------------------- verdicts
_STATE = {}


def init_worker(rev):
    import langdetect
    _STATE["ours"], _STATE["ifeval"] = load_ours(rev), load_ifeval()
    _STATE["checkers"] = ifeval_checkers(_STATE["ifeval"])
    # Where our module calls plain langdetect.detect with the global seed 0 (as scorer 2 does), it shares the
    # cache too: same function, same verdicts, one detection per text instead of six.
    if getattr(_STATE["ours"], "detect", None) is langdetect.detect and langdetect.DetectorFactory.seed == 0:
        _STATE["ours"].detect = cached_detect


def ifeval_checkers(ie):
    def make(cls, **kwargs):
        checker = cls(cls.__name__)
        checker.build_description(**kwargs)
        return checker.check_following
    both = lambda *fs: (lambda text: all(f(text) for f in fs))
    checkers = {b: make(ie.ResponseLanguageChecker, language=code) for b, code in LANGUAGES.items()}
    checkers.update({b: both(make(ie.NumberOfWords, num_words=lo, relation="at least"),
                             make(ie.NumberOfWords, num_words=hi + 1, relation="less than"))
                     for b, (lo, hi) in WORDS.items()})
    checkers.update({b: both(make(ie.NumberOfSentences, num_sentences=n, relation="at least"),
                             make(ie.NumberOfSentences, num_sentences=n + 1, relation="less than"))
                     for b, n in SENTENCES.items()})
    checkers.update(lowercase=make(ie.LowercaseLettersEnglishChecker),
                    uppercase=make(ie.CapitalLettersEnglishChecker), json=make(ie.JsonFormat))
    return checkers


def ours_verdict(ours, behavior: str, text: str, lang: str | None) -> bool:
    from steer_eval.scoring.behaviors import BEHAVIORS  # the registry names the verifier and its parameters
    spec = BEHAVIORS[behavior]
    params = dict(spec.params)
    if spec.verifier == "has_sentences" and lang and "lang" in inspect.signature(ours.has_sentences).parameters:
        params["lang"] = lang
    return bool(ours.run_verifier(spec.verifier, text, params))


def judge(key):
    """Verdicts of both sides for one (text, sentence language) on every behaviour, disagreements classified."""
    text, lang = key
    ours = _STATE["ours"]
    checkers = _STATE["checkers"]
    rows = {}
    for behavior in MAPPED + UNMAPPED:
        mine = ours_verdict(ours, behavior, text, lang)
        theirs = checkers[behavior](text) if behavior in checkers else None
        cls = reason = None
        if theirs is not None and mine != theirs:
            cls, reason = classify(behavior, text, lang, mine, theirs, ours)
        rows[behavior] = (mine, theirs, cls, reason)
    return key, rows


# ---------------------------------------------------------------- classification rules
def _label(text):
    return detect_or_none(text, cached_detect)


def detection_failure(b, text, lang, mine, theirs, ours):
    if FAMILY[b] == "language" and not mine and theirs and _label(text) is None:
        return "deliberate", "langdetect cannot label the text: IFEval counts that as followed, ours as not"


@functools.cache
def _hand_labels():
    """sha256 of a response -> the language a reader gave it (benchmarks/data/language_disagreements.jsonl)."""
    path = Path(__file__).parent / "data" / "language_disagreements.jsonl"
    return {row["text_sha256"]: row["label"] for row in map(json.loads, path.read_text("utf-8").splitlines())}


def detector_difference(b, text, lang, mine, theirs, ours):
    if FAMILY[b] != "language" or ours.detect_language(text) == _label(text):
        return None
    reason = f"detectors differ: ours (py3langid) {ours.detect_language(text)!r}, IFEval (langdetect) {_label(text)!r}"
    label = _hand_labels().get(hashlib.sha256(text.encode()).hexdigest())
    if label:
        reason += f"; read by hand: {label!r}, {'ours' if mine == (label == LANGUAGES[b]) else 'IFEval'} right"
    return "deliberate", reason


def ifeval_requires_english(b, text, lang, mine, theirs, ours):
    cased = text.islower() if b == "lowercase" else text.isupper()
    if FAMILY[b] == "case" and mine and not theirs and cased and _label(text) != "en":
        return "deliberate", f"IFEval's case checkers also require English (langdetect says {_label(text)!r})"


def _strict_json(value):
    def refuse(name): raise ValueError(name)
    def pairs(items):
        if len({k for k, _ in items}) != len(items): raise ValueError("duplicate key")
        return dict(items)
    return json.loads(value, parse_constant=refuse, object_pairs_hook=pairs)


def _ifeval_json_text(text):
    s = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        s = s.removeprefix(prefix)
    return s.removesuffix("```").strip()


def json_shape(b, text, lang, mine, theirs, ours):
    if b != "json" or mine or not theirs:
        return None
    parsed = json.loads(_ifeval_json_text(text))
    if not (isinstance(parsed, dict) and list(parsed) == ["answer"]):
        return "deliberate", f"IFEval accepts any JSON; ours needs {{\"answer\": ...}} only (got {type(parsed).__name__})"
    try:
        _strict_json(_ifeval_json_text(text))
    except ValueError as error:
        return "deliberate", f"ours is strict RFC 8259 (NaN/Infinity, duplicate keys): {error}"


def json_fence(b, text, lang, mine, theirs, ours):
    if b == "json" and text.strip().startswith("```"):
        return "boundary", "fences: ours strips one closed fence with any info string; IFEval strips only " \
                           "```json/```Json/```JSON/``` and needs no closing fence"


def word_count(b, text, lang, mine, theirs, ours):
    if FAMILY[b] == "words":
        from lm_eval.tasks.ifeval.instructions_util import count_words
        return "ours_suspect", f"word counts: ours {ours.count_words(text)}, IFEval {count_words(text)}"


# Shapes of abbreviations, initials and ordinals: "J.", "13.", "P.S.", "e.g.", "Dr.", "Art."
_ABBREVIATION = re.compile(r"(?:[^\W\d_]|\d{1,3}|[^\W\d_]+(?:\.[^\W\d_]+)+|[A-Z][a-z]{0,3})\.")
_END = ".!?…‼⁇⁈⁉؟।॥。！？"
_MARKER = re.compile(r"[ \t]*(?:#{1,6}|>|[-*+•]|\d{1,3}[.)])?[ \t]*")


def _snap(text, offset):
    """A sentence start moved back to its line start when only a list/heading marker or spaces precede it."""
    line_start = text.rfind("\n", 0, offset) + 1
    return line_start if _MARKER.fullmatch(text, line_start, offset) else offset


def _ours_starts(text, sentences):
    """Where each of our sentences starts in ``text`` (ours re-joins tokens with single spaces: walk its pieces)."""
    starts, cursor = [], 0
    for sentence in sentences:
        for index, piece in enumerate(sentence.split()):
            found = text.find(piece, cursor)
            if found < 0:
                return None
            if index == 0:
                starts.append(found)
            cursor = found + len(piece)
    return {_snap(text, s) for s in starts[1:]}


def _punkt_starts(text):
    """Punkt's sentence starts, less those after a bare list number ("1.", which Punkt counts as a sentence)."""
    spans = list(untrained_punkt().span_tokenize(text))
    after_number = {c for (a, b), (c, _) in zip(spans, spans[1:]) if re.fullmatch(r"\d{1,3}[.)]", text[a:b])}
    return {_snap(text, a) for a, _ in spans[1:] if a not in after_number}, len(after_number)


def _explain_boundary(text, offset, side, english_starts, lang):
    """(class, reason) for a sentence start that only one side has; None when no rule explains it."""
    before = text[:offset].rstrip()
    last_token = before.split()[-1] if before.split() else ""
    line_start = offset == 0 or text[offset - 1] == "\n"
    if side == "ours" and line_start and not before.endswith(tuple(_END)):
        return "boundary", "a line without end punctuation is a sentence in ours (list, heading); Punkt joins lines"
    if side == "ours" and before.endswith(("...", "…")):
        return "boundary", "'...' before a capital ends a sentence in ours; Punkt reads an ellipsis as a pause"
    if line_start and text[offset:].lstrip().startswith(("```", "~~~")):
        return "boundary", "code fence line: ours drops it and splits on the lines inside; Punkt reads through it"
    if side == "ours" and re.fullmatch(r"[^\W\d_]\.", last_token):
        return "ifeval_quirk", f"Punkt takes the one-letter word {last_token!r} for an initial"
    if side == "punkt" and re.match(r"[\"'”’»)\]]+[,;:]", text[offset:]):
        return "ifeval_quirk", "Punkt starts a sentence at the closing quote after a period"
    if side == "punkt" and re.fullmatch(r"[\W_]*", text[offset:].split("\n", 1)[0]):
        return "boundary", "the piece Punkt starts here has no word characters (rule, emoji, fence); ours skips it"
    if side == "punkt" and lang and offset in english_starts:
        return "boundary", f"{last_token!r} is an abbreviation by ours' {lang!r} rules (by its English rules it " \
                           "ends a sentence); Punkt is English-only"
    word = last_token.strip("\"'“”‘’()[]*_«»")
    if side == "punkt" and _ABBREVIATION.fullmatch(word):
        return "ifeval_quirk", f"untrained Punkt splits after the abbreviation/initial/number {last_token!r}"
    if side == "punkt" and re.search(r"[.!?…][\"'”’»)]+$", last_token):
        return "ifeval_quirk", f"Punkt splits after a closing quote {last_token!r} inside a sentence"
    return None


@functools.lru_cache(maxsize=4096)
def sentence_differences(text, lang, ours):
    split = getattr(ours, "split_sentences", None)
    if split is None:
        return [("ours_suspect", "this revision exposes no split_sentences to compare boundaries")]
    takes_lang = "lang" in inspect.signature(split).parameters
    mine = _ours_starts(text, split(text, lang) if takes_lang else split(text))
    english = _ours_starts(text, split(text)) if lang and takes_lang else mine
    if mine is None or english is None:
        return [("ours_suspect", "our sentences cannot be located in the text")]
    theirs, numbers = _punkt_starts(text)
    found = [("ifeval_quirk", "Punkt counts a list number ('1.') as a sentence of its own")] * numbers
    found += [_explain_boundary(text, o, "ours", english, lang) or ("ours_suspect", f"only ours splits at ...{text[max(0, o - 30):o]!r}")
             for o in sorted(mine - theirs)]
    found += [_explain_boundary(text, o, "punkt", english, lang) or ("ours_suspect", f"only Punkt splits at ...{text[max(0, o - 30):o]!r}")
              for o in sorted(theirs - mine)]
    if not found:  # same starts, different counts: pieces one side drops
        found = [("boundary", "same boundaries; ours drops pieces without word characters (fences, rules)")]
    return found


def sentence_split(b, text, lang, mine, theirs, ours):
    if FAMILY[b] == "sentences":
        found = sentence_differences(text, lang, ours)
        worst = next(c for c in reversed(CLASSES) if any(cls == c for cls, _ in found))
        return worst, "; ".join(sorted({reason for _, reason in found}))[:400]


def unexplained(b, text, lang, mine, theirs, ours):
    return "ours_suspect", "no rule explains this disagreement"


RULES = [detection_failure, detector_difference, ifeval_requires_english, json_shape, json_fence, word_count, sentence_split, unexplained]


def classify(behavior, text, lang, mine, theirs, ours):
    return next(r for r in (rule(behavior, text, lang, mine, theirs, ours) for rule in RULES) if r)


# ---------------------------------------------------------------- records, run, report
def read_records(path=RECORDS):
    """(tar member, record) for every JSONL line in the records archive (plain tarfile + json, nothing unpickled)."""
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jsonl"):
                for line in archive.extractfile(member):
                    if line.strip():
                        yield member.name, json.loads(line)


def record_language(record):
    return next((LANGUAGES[b] for b in record["behaviors"] if b in LANGUAGES), None)


def run(rev=None, workers=2, limit=None, records_path=RECORDS, known_labels: dict | None = None):
    """Judge every record on every behaviour; returns (summary, disagreement rows). `known_labels`: langdetect's
    answers for texts (load_langdetect_labels()), used instead of detecting again."""
    started = time.perf_counter()
    _KNOWN_LABELS.clear()
    _KNOWN_LABELS.update(known_labels or {})  # before the pool forks
    cached_detect.cache_clear()  # answers of an earlier run with other labels
    records = list(read_records(records_path))[:limit]
    keys = sorted({(r["response"], record_language(r)) for _, r in records}, key=lambda k: (k[0], k[1] or ""))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers, init_worker, (rev,)) as pool:
            verdicts = dict(pool.imap_unordered(judge, keys, chunksize=64))
    else:
        init_worker(rev)
        verdicts = dict(map(judge, keys))
    counts = collections.defaultdict(collections.Counter)
    disagreements = []
    for member, record in records:
        text = record["response"]
        for behavior, (mine, theirs, cls, reason) in verdicts[(text, record_language(record))].items():
            for group in {("behaviors", behavior), ("families", FAMILY[behavior])}:
                c = counts[group]
                c["n"] += 1
                c["ours_pass"] += mine
                if theirs is not None:
                    c["ifeval_pass"] += theirs
                    c["agree"] += mine == theirs
                    c[cls] += cls is not None
            if cls:
                disagreements.append({"member": member, "id": record["id"], "behavior": behavior, "ours": mine,
                                      "ifeval": theirs, "class": cls, "reason": reason, "response": text[:200]})
    summary = {"ours": f"git:{rev}" if rev else "working tree", "records": len(records), "unique_keys": len(keys),
               "scorer_version": scorer_version(rev), "seconds": round(time.perf_counter() - started, 1),
               "workers": workers, "approximations": APPROXIMATIONS, "unmapped": UNMAPPED,
               "families": {}, "behaviors": {}}
    for (table, group), c in counts.items():
        row = {"n": c["n"], "ours_pass_pct": round(100 * c["ours_pass"] / c["n"], 2)}
        if group not in UNMAPPED and group != "title_case":
            row.update(agree_pct=round(100 * c["agree"] / c["n"], 2),
                       ifeval_pass_pct=round(100 * c["ifeval_pass"] / c["n"], 2),
                       classes={k: c[k] for k in CLASSES})
        summary[table][group] = row
    return summary, disagreements


def scorer_version(rev):
    source = (subprocess.run(["git", "show", f"{rev}:steer_eval/scoring/verdict.py"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout if rev else (REPO / "steer_eval/scoring/verdict.py").read_text())
    found = re.search(r"^SCORER_VERSION = (\d+)", source, re.M)
    return int(found.group(1)) if found else None


def table_markdown(summary, command):
    def rows(groups):
        out = ["| | n | agree % | ours pass % | IFEval pass % | " + " | ".join(CLASSES) + " |",
               "|---|---:|---:|---:|---:|" + "---:|" * len(CLASSES)]
        for name, r in groups.items():
            if "agree_pct" in r:
                out.append(f"| {name} | {r['n']} | {r['agree_pct']:.2f} | {r['ours_pass_pct']:.2f} | "
                           f"{r['ifeval_pass_pct']:.2f} | " + " | ".join(str(r["classes"][k]) for k in CLASSES) + " |")
            else:
                out.append(f"| {name} (unmapped) | {r['n']} | - | {r['ours_pass_pct']:.2f} | - |" + " - |" * len(CLASSES))
        return out
    order = ["language", "words", "case", "sentences", "json", "title_case"]
    families = {f: summary["families"][f] for f in order if f in summary["families"]}
    behaviors = {b: summary["behaviors"][b] for b in MAPPED + UNMAPPED if b in summary["behaviors"]}
    return "\n".join([
        "# Our verifiers vs lm-eval's IFEval checkers", "",
        f"Ours: {summary['ours']} (scorer version {summary['scorer_version']}). {summary['records']} records "
        f"({summary['unique_keys']} distinct response/language pairs), every response judged on every behaviour. "
        f"Run time {summary['seconds']} s with {summary['workers']} worker(s).", "",
        f"Command: `{command}`", "",
        "Classes: deliberate = documented difference; boundary = convention difference; ifeval_quirk = IFEval "
        "wrong by its own definition; ours_suspect = unexplained, a human must look "
        "(results/ifeval_crosscheck/disagreements.jsonl).", "",
        "## Per family", "", *rows(families), "", "## Per behaviour", "", *rows(behaviors), "",
        "## Approximations", "", *(f"- {a}" for a in APPROXIMATIONS),
        "- title_case has no IFEval counterpart: only our pass rate is shown.", ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours-from-git", metavar="REV", help="judge with steer_eval/scoring/verifiers.py at git REV "
                        "(e.g. HEAD) instead of the working tree")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--summary-json", type=Path, help="also write the summary (table.json) to this path")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N records (smoke runs)")
    parser.add_argument("--write-langdetect-labels", action="store_true",
                        help=f"only write langdetect's label of every response to {LANGDETECT_LABELS.name}")
    args = parser.parse_args(argv)
    if args.write_langdetect_labels:
        print(f"{write_langdetect_labels(args.records)} labels written to {LANGDETECT_LABELS}")
        return
    summary, disagreements = run(args.ours_from_git, args.workers, args.limit, args.records)
    command = "python benchmarks/ifeval_crosscheck.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary["command"] = command.strip()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "table.md").write_text(table_markdown(summary, command.strip()), encoding="utf-8")
    for path in filter(None, [args.out_dir / "table.json", args.summary_json]):
        path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(args.out_dir / "disagreements.jsonl", "w", encoding="utf-8") as out:
        for row in disagreements:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print((args.out_dir / "table.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
