"""The documented commands that build on each other, run in their pages' order: README's grid and analyze, the main
job's steps (scripts/main_job.sh), the grid pages' Ray actors, ordering script, `score` and `analyze`, the trainers'
whole recipe (teacher data -> behaviour tokens -> interrupt and resume -> `<and>` -> torchrun -> evaluation), `infer`
and `mkdocs serve`. Each runs as written, with small caps (one or two prompts, 8-32 new tokens, one epoch) and
in-process where a process of its own shows nothing more; the default model's vLLM engine is the session's.

With tests/test_docs.py (the cheap `steer-eval` commands) and tests/test_docs_lm_eval.py (every `lm_eval` command),
every command of a shell block in README and docs is run, or is marked `# needs: gpu|cluster|network|quiet machine`
(test_every_documented_command_is_run_or_marked): a command that drifts from the code fails here."""
from __future__ import annotations

import glob
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_docs import ROOT, Command, all_commands, runnable_commands
from test_docs_lm_eval import capped as capped_lm_eval

pytestmark = pytest.mark.e2e

# Run, but not by this module: the README's second command is what CI runs; the site build has its own test.
RUN_ELSEWHERE = {
    "bash scripts/test.sh": ".ci/run (CI runs the README's second command)",
    "mkdocs build --strict": "test_docs.test_the_site_builds_strictly",
    "steer-eval serve": "test_serve's server fixture (the same command, on a free port, with a key)",
}
# What a `# needs: X` mark may stand in front of.
MARK_FITS = {
    "network": lambda text: text.startswith("pip install"),
    "gpu": lambda text: "cuda" in text,
    "cluster": lambda text: any(word in text for word in ("HEAD_IP", "RAY_AUTH", "ray start")),
    "quiet machine": lambda text: text.startswith("python benchmarks/"),
}
# Pages whose commands need a running server: tests/test_serve.py runs them against the one it starts.
PAGES_RUN_ELSEWHERE = {"docs/serving.md": "test_serve.test_the_serving_page_runs_against_the_server"}
MAIN_JOB = ROOT / "scripts" / "main_job.sh"
# Lines of scripts/main_job.sh that are not a documented command: the set-up CI has done before the suite starts,
# and the shell's own bookkeeping.
MAIN_JOB_SKIPPED = re.compile(r"^(set |cd |mkdir |echo |cat |out=|bash scripts/setup\.sh$)")
# Caps: option -> value. A cap replaces the option's value where the command has it, else it is added (except
# REPLACE_ONLY: added, it would change which combinations a command with --combination runs).
CAPS = {
    ("steer-eval", "grid"): {"--num-prompts": "1", "--max-new-tokens": "8", "--max-combinations": "1"},
    ("steer-eval", "infer"): {"--limit": "2", "--max-new-tokens": "8"},
    ("python", "scripts/run_ordering_experiments.py"): {"--num_samples": "1", "--max-new-tokens": "8",
                                                        "--max-combinations": "1"},
    ("python", "trainers/build_data.py"): {"--limit": "2", "--max_new_tokens": "24"},
    ("python", "trainers/train.py"): {"--epochs": "1", "--batch_size": "2", "--max_response_tokens": "32"},
    ("python", "trainers/evaluate_tokens.py", "generate"): {"--n_single": "1", "--n_pair": "1",
                                                            "--max_new_tokens": "8"},
}
REPLACE_ONLY = {("steer-eval", "grid", "--max-combinations")}


def _key(args: list[str]) -> tuple[str, str]:
    return (args[0], args[1] if len(args) > 1 else "")


def with_caps(args: list[str], interrupted: set[str] = frozenset()) -> list[str]:
    """The command's arguments with its caps. `train.py --resume` keeps its run's own settings; a training whose
    --out_dir the page resumes later stops after its first step, as if interrupted, so the resume has work to do."""
    args, key = list(args), _key(args)
    caps = CAPS.get(tuple(args[:3])) or CAPS.get(key, {})  # (program, script, subcommand) or (program, script)
    if key == ("python", "trainers/train.py") and "--resume" in args:
        caps = {}
    if key == ("python", "trainers/train.py") and caps and _option(args, "--out_dir") in interrupted:
        caps = {**caps, "--stop_after": "1"}
    for option, value in caps.items():
        if option in args:
            args[args.index(option) + 1] = value
        elif (*key, option) not in REPLACE_ONLY:
            args += [option, value]
    return args


def _option(args: list[str], option: str) -> str | None:
    return args[args.index(option) + 1] if option in args else None


def words(text: str) -> list[str]:
    """A command line's words as a shell gives them to the program: without prefix, comments; globs expanded in the
    current folder (a pattern that matches nothing stays as written, as in bash)."""
    args = shlex.split(text, comments=True)
    args[0] = args[0].removeprefix(".venv/bin/")
    return [match for arg in args for match in (sorted(glob.glob(arg)) if "*" in arg else []) or [arg]]


def main_job_commands() -> list[str]:
    """scripts/main_job.sh's commands, continuation lines joined and $out filled in."""
    text = MAIN_JOB.read_text(encoding="utf-8").replace("\\\n", " ")
    out = re.search(r"^out=(\S+)$", text, re.M).group(1)
    lines = [line.strip() for line in text.splitlines()]
    return [line.replace('"$out', out).replace("$out", out).replace('"', "")
            for line in lines if line and not line.startswith("#") and not MAIN_JOB_SKIPPED.match(line)]


def needs_the_engine(command: Command) -> bool:
    """Runs the default model on vLLM: `--backend vllm`, the ordering script (vLLM unless told), the main job."""
    return ("--backend vllm" in command.text or "run_ordering_experiments" in command.text
            or command.text.startswith("bash scripts/main_job.sh"))


def how_it_runs(command: Command, earlier: dict[str, str]) -> str:
    """Which test runs a documented command, or why none may."""
    args = shlex.split(command.text, comments=True)
    joined = " ".join(args)
    if command.needs:
        return f"needs {command.needs}"
    if args[0] in ("lm_eval", "lm-eval"):
        return "test_docs_lm_eval"
    if command.source in {c.source for c, _ in runnable_commands()}:
        return "test_docs cheap commands"
    if joined in RUN_ELSEWHERE:
        return RUN_ELSEWHERE[joined]
    if command.source.split(":")[0] in PAGES_RUN_ELSEWHERE:
        return PAGES_RUN_ELSEWHERE[command.source.split(":")[0]]
    if joined in earlier:
        return f"as {earlier[joined]}"
    return "page"


def classified() -> list[tuple[Command, str]]:
    earlier, result = {}, []
    for command in all_commands():
        result.append((command, how_it_runs(command, earlier)))
        earlier.setdefault(" ".join(shlex.split(command.text, comments=True)), command.source)
    return result


def page_commands() -> list[Command]:
    return [command for command, how in classified() if how == "page"]


ENGINE_PAGES = sorted({c.source.split(":")[0] for c in page_commands() if needs_the_engine(c)})
OTHER_PAGES = sorted({c.source.split(":")[0] for c in page_commands()} - set(ENGINE_PAGES))


class Pages:
    """Runs documented commands in one folder, as a reader would, one after another."""

    def __init__(self, folder: Path, commands: list[Command], lm_eval_main=None):
        self.folder, self.commands, self.lm_eval_main = folder, commands, lm_eval_main
        self.interrupted = {_option(words(c.text), "--out_dir") for c in commands if "--resume" in c.text}

    def run_all(self) -> None:
        for command in self.commands:
            self.run(command.text, command.source)

    def run(self, text: str, source: str) -> str:
        redirect = None
        if " > " in text:
            text, redirect = (part.strip() for part in text.split(" > ", 1))
        args = words(text)
        stdout = self.dispatch(args, source)
        if redirect:
            (self.folder / redirect).write_text(stdout)
        return stdout

    def dispatch(self, args: list[str], source: str) -> str:
        from cli_in_process import cli
        from trainer_in_process import script
        program = args[0]
        if program == "bash" and args[1:] == ["scripts/main_job.sh"]:
            for line in main_job_commands():
                self.run(line, f"{source} -> scripts/main_job.sh")
            return ""
        if program == "steer-eval":
            done = cli(*with_caps(args, self.interrupted)[1:], check=False)
        elif program in ("lm_eval", "lm-eval"):
            capped = capped_lm_eval(args[1:])
            if "main_job.sh" in source:  # its --limit 6 gives every k=3 subtask a complete order set: keep it
                capped[capped.index("--limit") + 1] = args[args.index("--limit") + 1]
            stdout, _ = self.lm_eval_main(self.folder, *capped)
            return stdout
        elif program == "python" and args[1].startswith(("trainers/", "scripts/", "benchmarks/")):
            done = script(args[1], *with_caps(args, self.interrupted)[2:])
        elif program == "torchrun":
            script_at = next(i for i, a in enumerate(args) if a.endswith(".py"))
            capped = with_caps(["python", *args[script_at:]], self.interrupted)
            done = subprocess.run([str(Path(sys.executable).parent / "torchrun"), *args[1:script_at],
                                   str(ROOT / capped[1]), *capped[2:]], cwd=self.folder, capture_output=True,
                                  text=True, timeout=600)
        elif program == "mkdocs" and args[1:] == ["serve"]:
            return serve_once()
        else:
            raise AssertionError(f"{source}: this test does not know how to run {shlex.join(args)!r}")
        assert done.returncode == 0, f"{source}: {shlex.join(args)}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        return done.stdout


def serve_once() -> str:
    """`mkdocs serve` on a free port: it builds the site, serves its front page, and stops when told."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "--dev-addr", address], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/", timeout=5) as page:
                    body = page.read().decode()
                    assert "steer-eval" in body
                    return body
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "mkdocs serve did not answer within 120 s"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_documented_command_is_run_or_marked():
    how = classified()
    assert not [f"{c.source}: {c.text}" for c, runs in how if runs == "page" and not _known(c)]
    counts = {}
    for _, runs in how:
        counts[runs.split(" ")[0]] = counts.get(runs.split(" ")[0], 0) + 1
    assert counts["page"] >= 15 and counts["test_docs_lm_eval"] >= 10, counts
    # a mark is no way around running a command: each one's reason must fit the command it marks
    wrong = [f"{c.source}: {c.needs}: {c.text}" for c, runs in how if runs.startswith("needs")
             and not MARK_FITS[c.needs](" ".join(shlex.split(c.text, comments=True)))]
    assert wrong == []


def _known(command: Command) -> bool:
    args = words(command.text)
    return (args[0] in ("steer-eval", "torchrun") or args[:2] == ["bash", "scripts/main_job.sh"]
            or args[:2] == ["mkdocs", "serve"]
            or (args[0] == "python" and args[1].startswith(("trainers/", "scripts/", "benchmarks/"))))


@pytest.fixture
def session_engine(monkeypatch, vllm_default):
    """`--backend vllm` on the default model, in this process, gets the session's engine (and keeps it)."""
    from steer_eval.lmeval.models import SteeringVLLMLM
    from steer_eval.runs.backend_spec import BackendSpec
    build = BackendSpec.build

    def session_or_own(spec):
        if (spec.backend, spec.model, spec.tokens_dir) == ("vllm", "smollm2-135m", None):
            return vllm_default
        return build(spec)

    monkeypatch.setattr(BackendSpec, "build", session_or_own)
    monkeypatch.setattr(SteeringVLLMLM, "build_backend", lambda self, spec: session_or_own(spec))
    monkeypatch.setattr(vllm_default, "shutdown", lambda: None)


@pytest.mark.vllm
def test_the_pages_that_run_the_engine_run_in_order(session_engine, lm_eval_main, tmp_path, monkeypatch):
    """README, then docs/grids.md, docs/index.md, docs/quality.md in one folder: quality.md scores the grid that
    grids.md made, as a reader following the pages would."""
    monkeypatch.chdir(tmp_path)
    assert {"README.md", "docs/grids.md", "docs/quality.md"} <= set(ENGINE_PAGES)
    Pages(tmp_path, [c for c in page_commands() if c.source.split(":")[0] in ENGINE_PAGES], lm_eval_main).run_all()
    main_job = tmp_path / "runs" / "main_job"
    assert (main_job / "grid" / "records.jsonl").stat().st_size > 0
    assert "| " in (main_job / "grid" / "summary.md").read_text()
    assert (main_job / "grid" / "summary.png").stat().st_size > 0
    assert (main_job / "report.html").read_text().startswith("<!DOCTYPE html>")
    # the card's command on the defaults, as the main job runs it: every metric is what analyze computes
    from test_lmeval_cli import assert_groups_match_analysis, assert_metrics_match_analysis, results_of
    results, samples = results_of(main_job / "lm_eval")
    assert results["config"]["steer_eval"]["model"] == "smollm2-135m"
    tasks = ["compose_2_seen", "compose_2_unseen", "compose_3_seen", "compose_3_unseen"]
    assert_groups_match_analysis(results, assert_metrics_match_analysis(results, samples, tasks),
                                 ["compose_2", "compose_3"])
    assert all(results["results"][task]["control_method,none"] == "steering" for task in tasks)
    assert all(sample["steering_tokens"] for task in tasks for sample in samples[task])
    assert (tmp_path / "runs" / "first" / "summary.png").stat().st_size > 0
    assert (tmp_path / "runs" / "grid1" / "records.fluency").stat().st_size > 0


# What a page's commands leave behind, beyond their exit status 0 (mkdocs serve: its front page, checked as served).
PRODUCES = {
    "docs/training.md": ["data/and/*_train.json", "runs/tokens/spanish/vector.safetensors",
                         "runs/tokens/and/vector.safetensors", "runs/tokens_ddp/spanish/vector.safetensors",
                         "runs/eval/records.jsonl", "runs/eval_table/*"],
    "docs/command-line.md": ["runs/infer/records.jsonl"],
    "docs/contributing.md": [],
    "docs/report.md": ["runs/sim/report.html", "runs/both.html"],
}


@pytest.mark.parametrize("page", OTHER_PAGES)
def test_the_other_pages_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Pages(tmp_path, [c for c in page_commands() if c.source.split(":")[0] == page]).run_all()
    missing = [pattern for pattern in PRODUCES[page] if not any(p.stat().st_size for p in tmp_path.glob(pattern))]
    assert missing == []
