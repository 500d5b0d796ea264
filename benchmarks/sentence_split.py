"""Compare sentence counters on benchmarks/data/sentence_cases.jsonl.

Splitters (all return a sentence count for one text):

* ``current``: ``steer_eval.scoring.verifiers.count_sentences`` from the working tree; it gets
  ``lang=<case language>`` when its signature has a ``lang`` parameter.
* ``v1``: ``count_sentences`` from ``git show REV:steer_eval/scoring/verifiers.py`` (a temporary
  module); REV is ``--v1-rev`` or the newest commit whose verifiers.py still defines
  ``split_sentences`` (HEAD itself before the splitter moved to sentences.py).
* ``pysbd``: ``pysbd.Segmenter(language=lang, clean=False)`` inside the v1 line handling.
* ``punkt``: nltk ``PunktSentenceTokenizer()`` (untrained, no data download) inside the
  v1 line handling.

Shared line handling for pysbd and punkt (the v1 rules; v1's regexes copied below): split the text with ``str.splitlines()``;
drop one list/heading/quote marker at the start of each line ("-", "*", "+", "•",
"1.", "2)", "#".."######", ">"); split each line with the library; keep only
segments that contain a word character (``\\w``). So lists, headings, blank lines
and emoji-only lines are counted identically; only the in-line splitting differs.
pysbd has no Portuguese; "pt" cases use its Spanish rules. Punkt is language-blind.

Timing: median seconds per case (over ``--reps`` calls), and 1 MB adversarial inputs,
each splitter/input pair in its own subprocess with a ``--timeout`` (default 20 s).

Usage:  .venv/bin/python benchmarks/sentence_split.py [--skip-adversarial]
Writes results/bench/sentence_split.json and results/bench/sentence_split.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITTERS = ("current", "v1", "pysbd", "punkt")
# v1's line rules, copied verbatim from verifiers.py at 515122a
LIST_OR_HEADING_MARKER = re.compile(r"^\s*(?:#{1,6}|>|[-*+•]|\d{1,3}[.)])(?:\s+|$)")
WORD = re.compile(r"\w+")
PYSBD_LANG = {"pt": "es"}  # pysbd 0.3.4 has no Portuguese
PROSE = (
    "The committee met on Tuesday to review the budget. Several members raised concerns "
    "about rising costs, and the chair promised a detailed report. After a short break, "
    "the discussion turned to the new library. Everyone agreed that the old building was "
    "too small! Would the city pay for a larger one? Nobody knew yet.\n\n"
)
ADVERSARIAL = {  # name -> builder of a ~1 MB input
    "dots": lambda: "." * 1_000_000 + "x",
    "a_dot_space": lambda: "a. " * 333_333,
    "fence_spaces": lambda: "```" + " " * 1_000_000 + "x",
    "exclam_question": lambda: "!?" * 500_000,
    "prose": lambda: (PROSE * (1_000_000 // len(PROSE) + 1))[:1_000_000],
    "dr_repeated": lambda: "Dr. " * 250_000,
    "long_line_no_spaces": lambda: ("loremipsum." * 90_910)[:1_000_000],
}


VERIFIERS_PATHS = ("steer_eval/scoring/verifiers.py", "steer_eval/verifiers.py")  # now, and before the layers


def v1_revision() -> str:
    """Newest commit whose verifiers module still defines split_sentences itself.

    At the time of writing that is HEAD's ancestor 515122a: later commits moved the
    splitter to steer_eval/scoring/sentences.py, so plain HEAD would be the new splitter."""
    revs = subprocess.run(["git", "rev-list", "HEAD", "--", *VERIFIERS_PATHS], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.split()
    return next(r for r in revs if "def split_sentences" in git_show(r))


def git_show(rev: str) -> str:
    """The verifiers module's source at ``rev``, wherever it lay then."""
    for path in VERIFIERS_PATHS:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode == 0:
            return shown.stdout
    raise FileNotFoundError(f"no verifiers module at {rev}")


def load_v1(rev: str) -> types.ModuleType:
    """The verifiers module as at ``rev``, built from its source (it imports nothing of steer_eval)."""
    module = sys.modules["verifiers_v1"] = types.ModuleType("verifiers_v1")  # dataclasses look it up there
    exec(compile(git_show(rev), f"{rev}:verifiers.py", "exec"), module.__dict__)
    return module


def make_splitters(v1_rev: str) -> tuple[dict, dict]:
    """name -> count(text, lang) callables, and name -> error for unavailable ones."""
    v1 = load_v1(v1_rev)
    funcs, errors = {"v1": lambda text, lang: v1.count_sentences(text)}, {}
    try:
        from steer_eval.scoring.verifiers import count_sentences
        if "lang" in inspect.signature(count_sentences).parameters:
            funcs["current"] = lambda text, lang: count_sentences(text, lang=lang)
        else:
            funcs["current"] = lambda text, lang: count_sentences(text)
    except Exception as exc:  # the working tree may be mid-edit
        errors["current"] = f"{type(exc).__name__}: {exc}"

    def with_v1_lines(split_line):
        def count(text, lang):
            total = 0
            for line in text.splitlines():
                line = LIST_OR_HEADING_MARKER.sub("", line, count=1)
                if line.strip():
                    total += sum(1 for seg in split_line(line, lang) if WORD.search(seg))
            return total
        return count

    import pysbd
    segmenters: dict[str, pysbd.Segmenter] = {}

    def pysbd_line(line, lang):
        lang = PYSBD_LANG.get(lang, lang)
        if lang not in segmenters:
            segmenters[lang] = pysbd.Segmenter(language=lang, clean=False)
        return segmenters[lang].segment(line)

    from nltk.tokenize.punkt import PunktSentenceTokenizer
    punkt = PunktSentenceTokenizer()
    funcs["pysbd"] = with_v1_lines(pysbd_line)
    funcs["punkt"] = with_v1_lines(lambda line, lang: punkt.tokenize(line))
    return funcs, errors


def run_cases(cases, funcs, reps):
    results = {}
    for name, func in funcs.items():
        got, times = [], []
        for case in cases:
            for _ in range(reps):
                start = time.perf_counter()
                try:
                    value = func(case["text"], case["lang"])
                except Exception as exc:
                    value = f"error: {type(exc).__name__}: {exc}"
                times.append((len(got), time.perf_counter() - start))
            got.append(value)
        per_case = defaultdict(list)
        for i, seconds in times:
            per_case[i].append(seconds)
        median = statistics.median(statistics.median(v) for v in per_case.values())
        results[name] = {"got": got, "median_case_s": median}
    return results


def accuracy(cases, got):
    def acc(idx):
        ok = sum(got[i] == cases[i]["sentences"] for i in idx)
        return {"correct": ok, "total": len(idx), "accuracy": round(ok / len(idx), 4)}
    by_lang, by_class = defaultdict(list), defaultdict(list)
    for i, case in enumerate(cases):
        by_lang[case["lang"]].append(i)
        by_class[case["class"]].append(i)
    failures = [dict(cases[i], got=got[i]) for i in range(len(cases))
                if got[i] != cases[i]["sentences"]]
    return {"overall": acc(range(len(cases))),
            "per_lang": {k: acc(v) for k, v in sorted(by_lang.items())},
            "per_class": {k: acc(v) for k, v in sorted(by_class.items())},
            "failures": failures}


def child(splitter: str, input_name: str, v1_rev: str) -> None:
    """Subprocess entry: time one splitter on one adversarial input, print JSON."""
    funcs, errors = make_splitters(v1_rev)
    if splitter in errors:
        return print(json.dumps({"error": errors[splitter]}))
    text = ADVERSARIAL[input_name]()
    start = time.perf_counter()
    count = funcs[splitter](text, "en")
    print(json.dumps({"seconds": time.perf_counter() - start, "count": count}))


def run_adversarial(names, timeout, v1_rev):
    out = {}
    for input_name in ADVERSARIAL:
        for name in names:
            cmd = [sys.executable, __file__, "--child", name, input_name, "--v1-rev", v1_rev]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                lines = proc.stdout.strip().splitlines()
                res = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                    {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            except subprocess.TimeoutExpired:
                res = {"timeout": True}
            out.setdefault(input_name, {})[name] = res
            print(f"  {input_name:20s} {name:8s} {fmt_time(res, timeout)}", flush=True)
    return out


def fmt_time(res, timeout):
    if "error" in res:  # e.g. nltk's own 5 s regex TimeoutError (ReDoS guard)
        return f"error ({res['error'].split(':')[0]})"
    return f"> {timeout:g} s" if res.get("timeout") else f"{res['seconds']:.3f} s"


def machine():
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")),
               platform.processor())
    from importlib.metadata import version
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "nltk": version("nltk"), "pysbd": version("pysbd")}


def markdown(report, names, timeout):
    acc = report["accuracy"]
    row = lambda label, cells: f"| {label} | " + " | ".join(cells) + " |"
    cell = lambda a: f"{a['accuracy']:.1%} ({a['correct']}/{a['total']})"
    head = [row("", names), "|---|" + "---|" * len(names)]
    md = ["# Sentence splitting benchmark", "",
          f"Command: `{report['command']}`  ", "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + "  ",
          f"Cases: {report['n_cases']} from `{report['cases']}`; v1 = verifiers.py at "
          f"{report['v1_rev'][:7]}; pysbd/punkt run inside v1's line handling", ""]
    if report["unavailable"]:
        md += [f"Unavailable: {report['unavailable']}", ""]
    md += ["## Exact-count accuracy", ""] + head
    md.append(row("**overall**", [cell(acc[n]["overall"]) for n in names]))
    for key in ("per_lang", "per_class"):
        md += ["", f"### {key.replace('_', ' ')}", ""] + head
        for group in acc[names[0]][key]:
            md.append(row(group, [cell(acc[n][key][group]) for n in names]))
    md += ["", "## Timing", "", *head,
           row("median per case", [f"{report['median_case_s'][n] * 1e6:.0f} µs" for n in names])]
    for input_name, by_name in report.get("adversarial", {}).items():
        md.append(row(f"1 MB `{input_name}`", [fmt_time(by_name[n], timeout) for n in names]))
    md += ["", "## Failures", ""]
    for n in names:
        md += [f"### {n} ({len(acc[n]['failures'])})", "", "| lang | class | want | got | text |",
               "|---|---|---|---|---|"]
        for f in acc[n]["failures"]:
            text = json.dumps(f["text"], ensure_ascii=False).replace("|", "\\|")
            md.append(f"| {f['lang']} | {f['class']} | {f['sentences']} | {f['got']} | {text} |")
        md.append("")
    return "\n".join(md) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=str(ROOT / "benchmarks/data/sentence_cases.jsonl"))
    parser.add_argument("--out-dir", default=str(ROOT / "results/bench"))
    parser.add_argument("--reps", type=int, default=5, help="timed calls per case")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per 1 MB input")
    parser.add_argument("--skip-adversarial", action="store_true")
    parser.add_argument("--v1-rev", help="commit for v1 (default: see v1_revision)")
    parser.add_argument("--child", nargs=2, metavar=("SPLITTER", "INPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    v1_rev = args.v1_rev or v1_revision()
    if args.child:
        return child(*args.child, v1_rev)

    cases = [json.loads(line) for line in Path(args.cases).read_text(encoding="utf-8").splitlines()
             if line.strip()]
    funcs, errors = make_splitters(v1_rev)
    names = [n for n in SPLITTERS if n in funcs]
    funcs = {n: funcs[n] for n in names}
    runs = run_cases(cases, funcs, args.reps)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "cases": os.path.relpath(args.cases, ROOT), "v1_rev": v1_rev, "n_cases": len(cases),
              "unavailable": errors, "median_case_s": {n: runs[n]["median_case_s"] for n in names},
              "accuracy": {n: accuracy(cases, runs[n]["got"]) for n in names}}
    for n in names:
        print(f"{n:8s} {report['accuracy'][n]['overall']}")
    if not args.skip_adversarial:
        report["adversarial"] = run_adversarial(names, args.timeout, v1_rev)
    (out := Path(args.out_dir)).mkdir(parents=True, exist_ok=True)
    (out / "sentence_split.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    (out / "sentence_split.md").write_text(markdown(report, names, args.timeout))
    print(f"wrote {out / 'sentence_split.json'} and {out / 'sentence_split.md'}")


if __name__ == "__main__":
    main()
