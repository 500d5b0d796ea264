"""The results page: one self-contained HTML file (`steer-eval report`, `analyze --html`).

The overview (run identity, analyze/compare's tables, the figures as SVG) is written here as static HTML; the order
view, sample browser and side-by-side view are drawn in the browser by page.js from one JSON block. Nothing is
fetched at view time: script, style and figures are inside the file, and its Content-Security-Policy forbids any
request (images only from data: URLs). Every text from the records reaches the page as JSON and is shown through
textContent, never parsed as HTML.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import tarfile
import time
from importlib import resources
from pathlib import Path
from typing import Sequence

from markdown_it import MarkdownIt

from steer_eval import __version__
from steer_eval.errors import UserError
from steer_eval.report.outcomes import Run, setting_label
from steer_eval.report.page.samples import RunRecords, SampleRule, collect, listed_flips, order_names, seeded_hash
from steer_eval.report.plots import FIGURES, pyplot
from steer_eval.report.tables import results_markdown
from steer_eval.runs.identity import manifest_path
from steer_eval.scoring.verdict import SCORER_NAME, SCORER_VERSION

log = logging.getLogger(__name__)
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
GENERATOR = b'<meta name="generator" content="steer-eval report">'  # in the head of every page written here
FIGURE_TITLES = {"accuracy_by_k.png": "Accuracy and order variance against k",
                 "order_heatmap.png": "Accuracy per combination and order",
                 "per_behavior.png": "Per-behaviour accuracy",
                 "accuracy_vs_quality.png": "Accuracy against response quality"}


def _manifests(source: Path) -> list[tuple[str, dict | str]]:
    """(records file, its manifest as stored, or why it cannot be read) for every records file of a source."""
    found: list[tuple[str, dict | str]] = []

    def parse(name: str, data: bytes | None) -> None:
        if data is None:
            found.append((name, "no manifest beside it"))
            return
        try:
            manifest = json.loads(data)
            found.append((name, manifest if isinstance(manifest, dict) else "not a JSON object"))
        except ValueError as error:
            found.append((name, f"unreadable ({error})"))

    if source.is_dir():
        for file in sorted(source.glob("*.jsonl")):
            path = manifest_path(file)
            parse(file.name, path.read_bytes() if path.is_file() else None)
    elif source.name.endswith(".tar.gz"):
        with tarfile.open(source) as archive:
            members = {member.name: member for member in archive.getmembers() if member.isfile()}
            for name in sorted(n for n in members if n.endswith(".jsonl")):
                manifest = members.get(name[:-len(".jsonl")] + ".manifest.json")
                parse(name, archive.extractfile(manifest).read() if manifest else None)
    else:
        path = manifest_path(source)
        parse(source.name, path.read_bytes() if path.is_file() else None)
    return found


def _identity_rows(manifest: dict) -> list[tuple[str, str]]:
    identity = manifest.get("identity") if isinstance(manifest.get("identity"), dict) else {}
    tokens = identity.get("tokens") if isinstance(identity.get("tokens"), dict) else {}
    rows = [("run id", manifest.get("run")), ("model", identity.get("model")),
            ("model fingerprint (embeddings/engine dtype)", identity.get("model_fingerprint")),
            ("weights fingerprint (every model file)", identity.get("weights")),
            ("backend", identity.get("backend")), ("dtype", identity.get("dtype")),
            ("generation", json.dumps(identity.get("generation"), sort_keys=True)),
            ("chat template options", json.dumps(identity.get("chat_template")) if identity.get("chat_template")
             else None),
            ("scorer", json.dumps(identity.get("scorer"), sort_keys=True)),
            ("steering tokens", ", ".join(f"{name} {fingerprint}" for name, fingerprint in sorted(tokens.items()))),
            ("command", manifest.get("command")), ("written", manifest.get("written")),
            ("steer-eval version", manifest.get("steer_eval_version"))]
    return [(name, str(value)) for name, value in rows if value not in (None, "", "null")]


def _identity_html(run: RunRecords) -> str:
    settings = run.settings.values()
    generations = sum(s.summary["generations"] for s in settings)
    incomplete = sum(s.summary["all"].get("incomplete_records", 0) for s in settings)
    counts = [("records", f"{generations:,}"), ("settings (control method, mode, k)", str(len(run.settings))),
              ("incomplete records (outside complete order sets)", f"{incomplete:,}"),
              ("judged by", "; ".join(f"{name}: {n:,} records" for name, n in sorted(run.scorer_versions.items()))),
              ("embedded on this page", f"{len(run.samples):,} records")]
    parts = [f"<section class='run'><h3>{html.escape(run.name)}</h3>"
             f"<p class='source'>{html.escape(str(run.source))}</p>", _definitions(counts)]
    older = sum(n for name, n in run.scorer_versions.items()
                if name.startswith(SCORER_NAME + " ") and name != f"{SCORER_NAME} v{SCORER_VERSION}")
    if older:
        parts.append(f"<p class='warning'>{older:,} records were judged by an older scorer than this version's "
                     f"(v{SCORER_VERSION}): the numbers are theirs; a badge says where today's verifiers decide "
                     "otherwise, and --rejudge judges every response by today's rules.</p>")
    for name, manifest in _manifests(run.source):
        parts.append(f"<h4>{html.escape(name)}</h4>")
        parts.append(_definitions(_identity_rows(manifest)) if isinstance(manifest, dict)
                     else f"<p class='warning'>manifest: {html.escape(manifest)}</p>")
    return "".join(parts) + "</section>"


def _definitions(rows: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows) + "</dl>"


def _figures_html(runs: Sequence[Run]) -> str:
    plt = pyplot()
    parts = []
    for name, make in FIGURES:
        figure = make(runs)
        if figure is None:
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(figure)
        data = base64.b64encode(buffer.getvalue()).decode()
        title = FIGURE_TITLES.get(name, name)
        parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/svg+xml;base64,{data}'>"
                     f"<figcaption>{html.escape(title)}</figcaption></figure>")
    return "".join(parts)


def _order_view(run: RunRecords, rule: SampleRule) -> list[dict]:
    rows = []
    for index, (setting, found) in enumerate(sorted(run.settings.items())):
        for result in found.combinations:
            if setting[2] < 2:
                continue
            accuracy = result.complete_order_accuracy or result.order_accuracy
            by_prompt = run.orders.get((setting, result.combination), {})
            flips = run.flips(setting, result.combination)
            rows.append({"setting": index, "combination": result.combination, "seen": result.seen,
                         "orders": order_names(result.combination),
                         "accuracy": [accuracy.get(order) for order in order_names(result.combination)],
                         "complete": result.complete_order_accuracy is not None,
                         "delta": result.order_delta_max, "incomplete": result.incomplete_records,
                         "flips": len(flips),
                         "listed": [[prompt, *by_prompt[prompt]]
                                    for prompt in listed_flips(flips, result.combination, rule)]})
    return rows


def page_data(runs: Sequence[RunRecords], prompts: dict[str, str], rule: SampleRule) -> dict:
    behaviors = sorted({b for run in runs for sample in run.samples for b in sample["behaviors"]})
    return {"behaviors": behaviors, "prompts": prompts,
            "runs": [{"name": run.name or "run",
                      "settings": [{"control": c, "mode": m, "k": k, "label": setting_label(c, m)}
                                   for c, m, k in sorted(run.settings)],
                      "combinations": _order_view(run, rule)} for run in runs],
            "samples": [{**sample, "run": index} for index, run in enumerate(runs)
                        for sample in sorted(run.samples, key=lambda s: seeded_hash(rule.seed, s["key"]))]}


def _asset(name: str) -> str:
    return resources.files("steer_eval.report.page").joinpath(name).read_text(encoding="utf-8")


def render(runs: Sequence[RunRecords], prompts: dict[str, str], rule: SampleRule, title: str) -> str:
    summaries = [Run(run.name if len(runs) > 1 else "", run.source, run.settings) for run in runs]
    tables = MarkdownIt("commonmark", {"html": False}).enable("table").render(results_markdown(summaries))
    data = json.dumps(page_data(runs, prompts, rule), ensure_ascii=False, separators=(",", ":"))
    # Inside <script>, "</script>" or "<!--" in a response would end the block: every < > & is escaped for JSON.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    slots = {"csp": CSP, "title": html.escape(title), "style": _asset("page.css"),
             "generated": html.escape(f"steer-eval {__version__}, {time.strftime('%Y-%m-%d %H:%M')}"),
             "runs": "".join(_identity_html(run) for run in runs), "tables": tables,
             "figures": _figures_html(summaries), "rule": html.escape(rule.describe()), "data": data,
             "script": _asset("page.js")}
    # One pass over the template: a slot's value (a run name, a table) is never scanned for slots itself.
    return re.sub(r"\{\{(\w+)\}\}", lambda match: slots[match.group(1)], _asset("page.html"))


def _refuse_to_replace(out: Path) -> None:
    """A file at `out` is replaced only if it is a page written here: a slip (`--html records.jsonl`) loses nothing."""
    if not out.exists():
        return
    try:
        with out.open("rb") as existing:
            ours = GENERATOR in existing.read(512)
    except OSError as error:
        raise UserError(f"cannot read {out} ({error.strerror}); give --html another path") from None
    if not ours:
        raise UserError(f"--html {out} exists and is not a page steer-eval wrote (records, say); it is left as it "
                        "is: give another path, or move that file away first")


def write_report(sources: Sequence[str | Path], names: Sequence[str], out: str | Path, rule: SampleRule = SampleRule(),
                 through=None, title: str | None = None, progress: bool = False) -> Path:
    """Reads the runs (two passes each), writes the page to `out` atomically; returns its path."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--html {out} is a folder; give the path of the HTML file to write, e.g. {out / 'report.html'}")
    _refuse_to_replace(out)
    partial = out.with_name(f".{out.name}.partial")
    try:  # before reading a million records: a path that cannot be written fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror}); give --html a file in a folder you can write") \
            from None
    try:
        runs, _, prompts = collect(sources, names, rule, through, progress)
        text = render(runs, prompts, rule, title or "steer-eval report: " + ", ".join(run.name for run in runs))
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out)  # a page is whole or absent, whenever the process dies
    finally:
        partial.unlink(missing_ok=True)
    log.info("report written to %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
