"""Compare language identifiers for ``steer_eval.scoring.verifiers.is_language``.

Candidates (each returns an ISO 639-1 code or None for one text):

* ``langdetect_seed0``: langdetect 1.0.9 as the verifier uses it today, but on a private
  ``DetectorFactory`` instance with ``Detector.seed = 0`` set per detector (no global state).
* ``langdetect_vote21``: same factory, majority label over seeds 0..20 (ties: the label
  reached first in seed order). N-grams are extracted once and reused for every seed.
* ``lingua_all_high`` / ``lingua_all_low``: lingua-language-detector, all 75 languages,
  preloaded models, high / low accuracy mode.
* ``lingua_latin_high`` / ``lingua_latin_low``: the 49 Latin-script languages only.
* ``py3langid``: ``py3langid.classify`` (97 languages, model inside the wheel).
* ``*_win``: the same detector on ``clip(text)`` (texts over 10,000 chars: 8 evenly spaced
  1,250-char windows), because lingua is slow on 1 MB inputs (quadratic on one long word).

Targets are de/es/fr/it/pt. "Verdict accuracy" scores what ``is_language`` answers: the
label is mapped to itself when it is a target and to "other" otherwise (so a Galician text
labelled "gl" or "ca" is right; labelled "pt" it is wrong).

Every candidate runs in its own subprocess (load time, peak RSS, PYTHONHASHSEED), twice
with different hash seeds for determinism; 1 MB adversarial inputs run in a subprocess
with a timeout. Without ``--quick`` every response in results/token_eval/records.tar.gz is
labelled too (pairwise agreement of "is target" verdicts, and the disagreement pool that
benchmarks/data/language_disagreements.jsonl was sampled from).

Usage:  .venv/bin/pip install lingua-language-detector==2.1.1   # the losing candidates are no dependency
        .venv/bin/python benchmarks/language_id.py [--quick] [--jobs 2]
(langdetect comes with the dev extra; py3langid is the verifier's own.)
Writes results/bench/language_id.json and results/bench/language_id.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "benchmarks/data/language_texts.jsonl"
DISAGREE = ROOT / "benchmarks/data/language_disagreements.jsonl"
ARCHIVE = ROOT / "results/token_eval/records.tar.gz"
OUT = ROOT / "results/bench"
TARGETS = ("de", "es", "fr", "it", "pt")
LANG_BEHAVIOURS = {"german": "de", "spanish": "es", "french": "fr", "italian": "it", "portuguese": "pt"}
CANDIDATES = ["langdetect_seed0", "langdetect_vote21", "lingua_all_high", "lingua_all_low",
              "lingua_latin_high", "lingua_latin_low", "py3langid", "lingua_all_high_win", "lingua_latin_high_win"]


# ----------------------------------------------------------------------------- detectors
def clip(text: str, limit: int = 10_000, windows: int = 8) -> str:
    """``text`` itself up to ``limit`` chars, else ``windows`` evenly spaced slices of ``limit // windows``."""
    if len(text) <= limit:
        return text
    width, step = limit // windows, (len(text) - limit // windows) // (windows - 1)
    return "\n".join(text[i * step:i * step + width] for i in range(windows))


def build(name: str):
    """Return ``detect(text) -> str | None`` for candidate ``name`` (suffix ``_win``: on ``clip(text)``)."""
    if name.endswith("_win"):
        base = build(name[:-4])
        return lambda text: base(clip(text))
    if name.startswith("langdetect"):
        from langdetect.detector import Detector
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
        from langdetect.lang_detect_exception import LangDetectException

        factory = DetectorFactory()  # private instance; DetectorFactory.seed (global) unused
        factory.load_profile(PROFILES_DIRECTORY)
        seeds = {"langdetect_seed0": [0], "langdetect_vote21": range(21),
                 "langdetect_vote21_alt": range(21, 42)}[name]

        def detect(text: str):
            if not text.strip():
                return None
            d = Detector(factory)
            d.append(text)
            try:
                d.cleaning_text()
                ngrams = d._extract_ngrams()
                d.cleaning_text, d._extract_ngrams = (lambda: None), (lambda: ngrams)
                labels = []
                for seed in seeds:
                    d.seed, d.langprob = seed, None
                    labels.append(d.detect())
            except LangDetectException:
                return None
            counts = Counter(labels)
            best = max(counts.values())
            label = next(lab for lab in labels if counts[lab] == best)
            return None if label == "unknown" else label.split("-")[0]
        return detect
    if name.startswith("lingua"):
        from lingua import LanguageDetectorBuilder as B
        b = B.from_all_languages() if "_all_" in name else B.from_all_languages_with_latin_script()
        if name.endswith("_low"):
            b = b.with_low_accuracy_mode()
        det = b.with_preloaded_language_models().build()

        def detect(text: str):
            lang = det.detect_language_of(text)
            return None if lang is None else lang.iso_code_639_1.name.lower()
        return detect
    if name == "py3langid":
        import py3langid
        py3langid.classify("warm up")  # loads the model

        def detect(text: str):
            return py3langid.classify(text)[0] if text.strip() else None
        return detect
    raise ValueError(name)


def adversarial_inputs() -> dict[str, str]:
    rows = [json.loads(line) for line in TEXTS.open(encoding="utf-8")]
    rng, parts, size = random.Random(0), [], 0
    while size < 1_000_000:
        parts.append(rng.choice(rows)["text"])
        size += len(parts[-1]) + 1
    n = 1_000_000
    return {"multilingual_1MB": " ".join(parts)[:n], "spaces_1MB": " " * n, "dots_1MB": "." * n,
            "backticks_1MB": "`" * n, "word_repeated_1MB": ("Hallo " * (n // 6))[:n],
            "one_long_word_1MB": "a" * n}


# ----------------------------------------------------------------------------- subprocess
def worker(name: str, texts_path: str, out_path: str, adversarial: bool) -> None:
    import psutil
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    detect = build(name)
    load_s = time.perf_counter() - t0
    rss_loaded = proc.memory_info().rss
    res = {"load_s": load_s, "rss_load_mb": (rss_loaded - rss0) / 2**20}
    if adversarial:
        res["adversarial"] = {}
        for key, text in adversarial_inputs().items():
            t = time.perf_counter()
            label = detect(text)
            res["adversarial"][key] = {"s": time.perf_counter() - t, "label": label}
            Path(out_path).write_text(json.dumps(res))  # partial results survive a timeout
    else:
        texts = json.loads(Path(texts_path).read_text(encoding="utf-8"))
        labels, times = [], []
        for text in texts:
            t = time.perf_counter()
            labels.append(detect(text))
            times.append(time.perf_counter() - t)
        res.update(labels=labels, median_ms=1000 * statistics.median(times),
                   p99_ms=1000 * sorted(times)[int(0.99 * (len(times) - 1))])
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out_path).write_text(json.dumps(res))


def run_worker(name, texts, hashseed, adversarial=False, timeout=None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tpath, opath = Path(tmp, "texts.json"), Path(tmp, "out.json")
        tpath.write_text(json.dumps(texts or []), encoding="utf-8")
        env = dict(os.environ, PYTHONHASHSEED=str(hashseed))
        cmd = [sys.executable, __file__, "--worker", name, "--texts", str(tpath), "--out", str(opath)]
        try:
            subprocess.run(cmd + (["--adversarial"] if adversarial else []), env=env, check=True,
                           timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        res = json.loads(opath.read_text()) if opath.exists() else {}
        res["timed_out"] = timed_out
        return res


# ----------------------------------------------------------------------------- data
def load_responses() -> list[dict]:
    rows = []
    with tarfile.open(ARCHIVE) as tar:
        for member in sorted((m for m in tar.getmembers() if m.name.endswith(".jsonl")), key=lambda m: m.name):
            for line in tar.extractfile(member).read().decode("utf-8").splitlines():
                rec = json.loads(line)
                rows.append({"archive_member": member.name, "id": rec["id"], "behaviors": rec["behaviors"],
                             "control_method": rec["control_method"], "mode": rec["mode"],
                             "text": rec["response"],
                             "text_sha256": hashlib.sha256(rec["response"].encode("utf-8")).hexdigest()})
    return rows


def verdict(label) -> str:
    return label if label in TARGETS else "other"


def bucket(text: str) -> str:
    n = len(text.split())
    return "2-5 words" if n <= 5 else "6-30 words" if n <= 30 else "31-60 words" if n <= 60 else ">60 words"


def acc(pairs) -> dict:
    pairs = list(pairs)
    return {"n": len(pairs), "acc": round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the labelled files (no full archive pass)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel workers for the archive pass")
    ap.add_argument("--adv-timeout", type=int, default=120, help="seconds for all 1 MB inputs of one candidate")
    ap.add_argument("--candidates", nargs="*", default=CANDIDATES)
    ap.add_argument("--cache-dir", help="reuse archive labels stored here (keyed by candidate and archive sha)")
    ap.add_argument("--worker"), ap.add_argument("--texts"), ap.add_argument("--out")
    ap.add_argument("--adversarial", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.texts, args.out, args.adversarial)

    gold = [json.loads(line) for line in TEXTS.open(encoding="utf-8")]
    responses = load_responses()
    by_sha = {r["text_sha256"]: r["text"] for r in responses}
    dis = [json.loads(line) for line in DISAGREE.open(encoding="utf-8")] if DISAGREE.exists() else []
    lab_texts = [g["text"] for g in gold] + [by_sha[d["text_sha256"]] for d in dis]
    cands = args.candidates
    report: dict = {"command": "  ".join(["python"] + sys.argv), "machine": {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine()}, "candidates": {}}

    for name in cands:  # sequential: timings are not disturbed by other workers
        print(f"[{name}] labelled texts", flush=True)
        a = run_worker(name, lab_texts, hashseed=1)
        b = run_worker(name, lab_texts, hashseed=2)
        adv = run_worker(name, None, 1, adversarial=True, timeout=args.adv_timeout)
        labels = a["labels"]
        g_lab, d_lab = labels[:len(gold)], labels[len(gold):]
        c = {"load_s": round(a["load_s"], 3), "peak_rss_mb": round(a["peak_rss_mb"], 1),
             "rss_load_mb": round(a["rss_load_mb"], 1), "median_ms": round(a["median_ms"], 3),
             "p99_ms": round(a["p99_ms"], 3),
             "deterministic_across_processes": a["labels"] == b["labels"],
             "adversarial": adv.get("adversarial", {}), "adversarial_timed_out": adv["timed_out"]}
        c["texts_exact"] = acc((p, g["lang"]) for p, g in zip(g_lab, gold))
        c["texts_verdict"] = acc((verdict(p), verdict(g["lang"])) for p, g in zip(g_lab, gold))
        for key, fn in (("by_length", lambda g: bucket(g["text"])), ("by_kind", lambda g: g["kind"])):
            c[key] = {k: acc((verdict(p), verdict(g["lang"])) for p, g in zip(g_lab, gold) if fn(g) == k)["acc"]
                      for k in sorted({fn(g) for g in gold})}
        c["targets_only_verdict"] = acc((verdict(p), g["lang"]) for p, g in zip(g_lab, gold) if g["lang"] in TARGETS)
        c["confusers_verdict"] = acc((verdict(p), verdict(g["lang"])) for p, g in zip(g_lab, gold)
                                     if g["lang"] not in TARGETS)
        dl = [(p if p in TARGETS else ("none" if p is None else p), d["label"]) for p, d in zip(d_lab, dis)]
        c["disagreements_exact"] = acc((p if p else "none", g) for p, g in dl)
        c["disagreements_verdict"] = acc((verdict(p), verdict(g)) for p, g in dl)
        c["_labels"] = labels
        report["candidates"][name] = c

    if "langdetect_vote21" in cands:  # seed stability of the vote itself: seeds 0..20 vs 21..41
        alt = run_worker("langdetect_vote21_alt", lab_texts, hashseed=1)["labels"]
        base = report["candidates"]["langdetect_vote21"]["_labels"]
        report["langdetect_vote_seed_stability"] = round(sum(x == y for x, y in zip(alt, base)) / len(base), 4)

    if not args.quick:
        texts = [r["text"] for r in responses]
        key = hashlib.sha256("".join(r["text_sha256"] for r in responses).encode()).hexdigest()[:12]

        def archive_labels(n):
            path = Path(args.cache_dir, f"{n}-{key}.json") if args.cache_dir else None
            if path and path.exists():
                return json.loads(path.read_text())
            labels = run_worker(n, texts, 1)["labels"]
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(labels))
            return labels
        with ThreadPoolExecutor(args.jobs) as pool:
            full = dict(zip(cands, pool.map(archive_labels, cands)))
        report["archive"] = {"n": len(texts), "agreement_is_target": {}, "target_rate": {}}
        for x in cands:
            report["archive"]["target_rate"][x] = round(sum(verdict(v) != "other" for v in full[x]) / len(texts), 4)
            report["archive"]["agreement_is_target"][x] = {
                y: round(sum(verdict(p) == verdict(q) for p, q in zip(full[x], full[y])) / len(texts), 4)
                for y in cands}
        if "langdetect_seed0" in cands and "langdetect_vote21" in cands:
            s0, v = full["langdetect_seed0"], full["langdetect_vote21"]
            t = [i for i in range(len(texts)) if verdict(s0[i]) != "other" or verdict(v[i]) != "other"]
            report["archive"]["seed0_vs_vote21_label_diff_among_target_verdicts"] = round(
                sum(s0[i] != v[i] for i in t) / len(t), 4)
        pool_idx = [i for i, r in enumerate(responses) if len({full[n][i] for n in cands}) > 1 and (
            any(verdict(full[n][i]) != "other" for n in cands) or set(r["behaviors"]) & set(LANG_BEHAVIOURS))]
        report["archive"]["disagreement_pool"] = len(pool_idx)
        sample = sorted(random.Random(0).sample(pool_idx, min(250, len(pool_idx))))
        report["archive"]["disagreement_sample"] = [
            {k: responses[i][k] for k in ("archive_member", "id", "control_method", "mode", "behaviors",
                                          "text_sha256")} | {"labels": {n: full[n][i] for n in cands}}
            for i in sample]

    for c in report["candidates"].values():
        c.pop("_labels")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "language_id.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (OUT / "language_id.md").write_text(markdown(report))
    print((OUT / "language_id.md").read_text())


def markdown(rep: dict) -> str:
    cands = rep["candidates"]
    advk = sorted({k for c in cands.values() for k in c["adversarial"]})
    head = ["candidate", "texts verdict", "texts exact", "targets", "confusers", "disagree verdict",
            "disagree exact", "median ms", "p99 ms", "max 1MB s", "load s", "peak RSS MB", "determ."]
    lines = ["# Language identification benchmark", "", f"Command: `{rep['command']}`", "",
             f"Machine: {rep['machine']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, c in cands.items():
        mx = max((v["s"] for v in c["adversarial"].values()), default=float("nan"))
        lines.append("| " + " | ".join(map(str, [
            n, c["texts_verdict"]["acc"], c["texts_exact"]["acc"], c["targets_only_verdict"]["acc"],
            c["confusers_verdict"]["acc"], c["disagreements_verdict"]["acc"], c["disagreements_exact"]["acc"],
            c["median_ms"], c["p99_ms"], f"{mx:.3f}" + (" (TIMEOUT)" if c["adversarial_timed_out"] else ""),
            c["load_s"], c["peak_rss_mb"], c["deterministic_across_processes"]])) + " |")
    n0 = next(iter(cands.values()))
    lines += ["", f"Texts: {n0['texts_verdict']['n']} labelled; disagreements: {n0['disagreements_verdict']['n']}.",
              "", "## Verdict accuracy by length / kind", "",
              "| candidate | " + " | ".join(n0["by_length"]) + " | " + " | ".join(n0["by_kind"]) + " |",
              "|" + "---|" * (1 + len(n0["by_length"]) + len(n0["by_kind"]))]
    for n, c in cands.items():
        lines.append(f"| {n} | " + " | ".join(str(v) for v in c["by_length"].values()) + " | "
                     + " | ".join(str(v) for v in c["by_kind"].values()) + " |")
    lines += ["", "## 1 MB adversarial inputs (seconds, label)", "", "| candidate | " + " | ".join(advk) + " |",
              "|" + "---|" * (1 + len(advk))]
    for n, c in cands.items():
        lines.append(f"| {n} | " + " | ".join(
            f"{c['adversarial'][k]['s']:.3f} {c['adversarial'][k]['label']}" if k in c["adversarial"] else "timeout"
            for k in advk) + " |")
    if "langdetect_vote_seed_stability" in rep:
        lines += ["", f"langdetect vote over seeds 0-20 vs 21-41, same label: {rep['langdetect_vote_seed_stability']}"]
    if "archive" in rep:
        ar = rep["archive"]
        lines += ["", f"## Archive: {ar['n']} responses; 'is target' verdict agreement", "",
                  "| | " + " | ".join(ar["agreement_is_target"]) + " | target rate |",
                  "|" + "---|" * (len(ar["agreement_is_target"]) + 2)]
        for x, row in ar["agreement_is_target"].items():
            lines.append(f"| {x} | " + " | ".join(str(v) for v in row.values()) + f" | {ar['target_rate'][x]} |")
        lines += ["", f"Disagreement pool: {ar['disagreement_pool']}; seed0 vs vote21 label differs on "
                      f"{ar.get('seed0_vs_vote21_label_diff_among_target_verdicts')} of target verdicts."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
