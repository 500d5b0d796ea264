"""Runs read from their records: `steer-eval compare` (several runs side by side: comparison.md and the plots) and
`steer-eval analyze` (one run, its accuracy table) both load runs here, so their numbers are the same.

A run is one records source (a JSONL file, a folder of them or a .tar.gz), with the fluency scores of its sidecar
(`steer-eval score`) when there is one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from steer_eval.errors import UserError
from steer_eval.judges.fluency import read_scores, sidecar_path, with_fluency
from steer_eval.report.outcomes import Run, summarize_settings
from steer_eval.report.plots import write_figures
from steer_eval.report.tables import comparison_markdown
from steer_eval.runs.records import Record, iter_records, rejudge

log = logging.getLogger(__name__)

Through = Callable[[Iterable[Record]], Iterator[Record]]


def default_name(source: str | Path) -> str:
    """The file or folder name without .jsonl/.tar.gz; a file called records is named after its folder."""
    path = Path(source).resolve()
    name = path.name.removesuffix(".tar.gz").removesuffix(".jsonl")
    return path.parent.name if name == "records" else name


def check_source(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source} does not exist; give a records JSONL file, a folder of them or a .tar.gz")
    return path


def run_records(source: str | Path, through: Through | None = None) -> Iterator[Record]:
    """A run's records, streamed, with the fluency scores of its sidecar; `through` sees (and may replace, e.g.
    re-judge) every record. A missing source fails here, before any is read."""
    path = check_source(source)
    records = iter_records(path)
    sidecar = sidecar_path(path)
    fluency = read_scores(sidecar)
    if fluency:
        log.info("fluency scores from %s", sidecar)
        records = with_fluency(records, fluency, sidecar)
    return through(records) if through else records


def load_run(source: str | Path, name: str | None = None, through: Through | None = None) -> Run:
    """One run's summaries per setting; `through` sees (and may replace, e.g. re-judge) every record first."""
    path = Path(source)
    settings = summarize_settings(run_records(path, through))
    if not settings:
        raise UserError(f"no records in {source} (give a JSONL file, a folder of them or a .tar.gz)")
    return Run(name if name is not None else default_name(path), path, settings)


def rejudged(records: Iterable[Record]) -> Iterator[Record]:
    """Every response judged again with this checkout's verifiers."""
    return map(rejudge, records)


def run_names(sources: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """One name per run: the --name given, else its file or folder name; two runs never share one."""
    if names is not None and len(names) != len(sources):
        raise UserError(f"{len(names)} --name for {len(sources)} runs; give one --name per run, in order, or none")
    chosen = list(names) if names is not None else [default_name(s) for s in sources]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise UserError(f"two runs would both be called {', '.join(duplicates)}; tell them apart with --name")
    return chosen


def load_runs(sources: Sequence[str | Path], names: Sequence[str] | None = None, rejudge: bool = False) -> list[Run]:
    return [load_run(source, name, rejudged if rejudge else None)
            for source, name in zip(sources, run_names(sources, names))]


def write_comparison(runs: Sequence[Run], out_dir: str | Path) -> tuple[str, list[Path]]:
    """comparison.md and the PNGs that have data; returns the markdown and the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(runs)
    (out / "comparison.md").write_text(text, encoding="utf-8")
    return text, [out / "comparison.md", *write_figures(runs, out)]
