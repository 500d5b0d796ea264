"""The documentation builds and its commands are real.

The site (`mkdocs.yml`, `docs/`) builds with `--strict`. The README stays a front page: at most 12 KiB, with the two
set-up commands first. Every command in a shell block (```bash, ```sh, ```shell, ```console) of README.md and
docs/**/*.md is checked against the code, without being run:

- `steer-eval ...` (also `.venv/bin/steer-eval`, `python -m steer_eval.cli`) is parsed by
  `steer_eval.cli.main.build_parser()`;
- `lm_eval ...` / `lm-eval ...` is parsed by lm-eval's own command-line parser; its `--model` must be one of ours or
  a stock model the docs use, and every `steer_`/`compose_` task must exist in steer_eval/tasks/;
- `python trainers|benchmarks|scripts/X.py ...` (also under torchrun) must name a file that exists, and each
  `--flag` must be one its parser defines (read from the script's source, or the parser it hands over to);
- `bash scripts|trainers/X.sh` must name a file that exists.

A `# needs: gpu|cluster|network|quiet machine` comment line marks the command below it as one that needs what this
machine lacks (a GPU, several nodes, downloads into the environment, or, for a benchmark, minutes of a machine doing
nothing else); as a block's first line, with the words "whole block", it marks every command of the block (a later
mark still wins for its own command). Marked commands get the same static checks. The `steer-eval` commands that need no vLLM engine are run
here (an output shown under one must be its output); every `lm_eval` command is run by tests/test_docs_lm_eval.py,
and the rest in their pages' order by tests/test_docs_pages.py, which also checks that nothing is left over.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 12_288
SETUP_LINES = [
    "bash scripts/main_job.sh   # sets up .venv, fetches SmolLM2-135M-Instruct, runs the main job on it",
    "bash scripts/test.sh       # sets up .venv and runs the tests (CI runs exactly this)",
]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
LM_EVAL_MODELS = {"steering_hf", "steering_vllm", "hf", "vllm", "steered"}
SCRIPT_FOLDERS = ("trainers", "benchmarks", "scripts")
# Scripts whose flags are defined elsewhere: trainers/train.py builds its parser from TrainConfig's fields.
TRAIN_CONFIG = ROOT / "steer_eval" / "training" / "trainer_setup.py"
NEEDS = re.compile(r"^#\s*needs:\s*(gpu|cluster|network|quiet machine)\b")


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # continuation lines joined
    needs: str | None


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def shell_commands(markdown: str, source: str) -> list[Command]:
    """The commands of every shell block: continuation lines joined, comment-only lines dropped."""
    commands, fence, pending, start, needs, block_needs = [], None, [], 0, None, None
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, block_start = (match.group(1), match.group(2).lower()), number
            continue
        if stripped.startswith(fence[0]) and stripped.strip(fence[0][0]) == "":
            fence, pending, needs, block_needs = None, [], None, None
            continue
        if fence[1] not in SHELL_FENCES:
            continue
        if fence[1] == "console":
            if not pending and not stripped.startswith("$ "):
                continue  # console output
            stripped = stripped[2:] if stripped.startswith("$ ") else stripped
        if not pending:
            if not stripped:
                continue
            if stripped.startswith("#"):
                marked = NEEDS.match(stripped)
                needs = marked.group(1) if marked else needs
                if marked and number == block_start + 1 and "whole block" in stripped:
                    block_needs = needs
                continue
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        commands.append(Command(f"{source}:{start}", " ".join(pending), needs or block_needs))
        pending, needs = [], None
    return commands


def all_commands() -> list[Command]:
    return [command for path in markdown_files()
            for command in shell_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


def _argparse_error(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """None when `parser` accepts `args`, else argparse's own message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as stop:
        if stop.code not in (0, None):
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {stop.code}"
    return None


def _drop_ellipses(args: list[str]) -> list[str]:
    """`steer-eval grid ... --actors 2`: a `...` standing for omitted options (not an option's value) is left out."""
    return [a for i, a in enumerate(args) if not (a == "..." and (i == 0 or not args[i - 1].startswith("-")))]


def _steer_eval_error(args: list[str]) -> str | None:
    from steer_eval.cli.main import build_parser
    return _argparse_error(build_parser(), _drop_ellipses(args))


def our_task_names() -> set[str]:
    folder = ROOT / "steer_eval" / "tasks"
    names = {path.stem for path in folder.glob("*.yaml")}
    for path in folder.glob("*yaml"):
        names |= set(re.findall(r"^(?:tag|task|group):\s*([\w-]+)\s*$", path.read_text(encoding="utf-8"), re.M))
    return names


def _lm_eval_error(args: list[str]) -> str | None:
    from lm_eval._cli.harness import HarnessCLI
    parser = HarnessCLI()._parser
    args = _drop_ellipses(args)
    if not args or args[0] not in ("run", "ls", "validate"):
        args = ["run", *args]  # lm-eval's own legacy form: no subcommand means run
    problem = _argparse_error(parser, args)
    if problem:
        return problem
    with contextlib.redirect_stderr(io.StringIO()):
        parsed = parser.parse_args(args)
    model = getattr(parsed, "model", None)
    if model not in LM_EVAL_MODELS:
        return f"--model {model!r} is none of {sorted(LM_EVAL_MODELS)}"
    tasks = getattr(parsed, "tasks", None)
    names = tasks if isinstance(tasks, list) else str(tasks or "").split(",")
    names = [n for item in names for n in str(item).split(",") if n]
    if not names:
        return "no --tasks"
    known = our_task_names()
    unknown = [n for n in names if n.startswith(("steer_", "compose_")) and n not in known]
    return f"unknown task(s) {unknown}" if unknown else None


def script_flags(script: Path) -> set[str] | None:
    """The flags a script's parser defines, read from source; None when it hands its arguments to the CLI."""
    if script == ROOT / "scripts" / "inference.py":
        return None
    if script == ROOT / "trainers" / "train.py":
        tree = ast.parse(TRAIN_CONFIG.read_text(encoding="utf-8"))
        config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
        flags = {"--json_paths"}
        for node in config.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                flags.add(f"--{node.target.id}")
                if isinstance(node.annotation, ast.Name) and node.annotation.id == "bool":
                    flags.add(f"--no-{node.target.id}")  # BooleanOptionalAction
        return flags | {"-h", "--help"}
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags |= {n for n in names if n.startswith("-")}
            boolean_optional = any(k.arg == "action" and "BooleanOptional" in ast.unparse(k.value)
                                   for k in node.keywords)
            if boolean_optional:
                flags |= {f"--no-{n[2:]}" for n in names if n.startswith("--")}
    return flags


def _script_error(path: str, args: list[str]) -> str | None:
    script = ROOT / path
    if not any(path.startswith(f"{folder}/") for folder in SCRIPT_FOLDERS) or not script.is_file():
        return f"no script {path}"
    flags = script_flags(script)
    if flags is None:  # scripts/inference.py is `steer-eval infer --backend vllm ...`
        return _steer_eval_error(["infer", "--backend", "vllm", *args])
    unknown = [a.split("=", 1)[0] for a in args if a.startswith("--") and a.split("=", 1)[0] not in flags]
    return f"{path} defines no {', '.join(unknown)}" if unknown else None


def command_error(text: str) -> str | None:
    """Why a documented command would not run as written (None: it is fine, or not one this test knows)."""
    inner = re.findall(r"\$\(([^()]*)\)", text)  # $(steer-eval models fetch ...): checked on its own
    for command in inner:
        if error := command_error(command):
            return f"in $({command}): {error}"
    try:
        tokens = shlex.split(re.sub(r"\$\(([^()]*)\)", "SUBSTITUTED", text), comments=True)
    except ValueError as error:
        return f"cannot be split like a shell line: {error}"
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]  # VAR=value prefixes
    if not tokens:
        return None
    program = tokens[0].removeprefix(".venv/bin/")
    rest = tokens[1:]
    if program == "steer-eval":
        return _steer_eval_error(rest)
    if program in ("lm_eval", "lm-eval"):
        return _lm_eval_error(rest)
    if program in ("python", "python3"):
        if rest[:2] == ["-m", "steer_eval.cli"]:
            return _steer_eval_error(rest[2:])
        if rest and rest[0].endswith(".py"):
            return _script_error(rest[0], rest[1:])
        return None
    if program == "torchrun":
        scripts = [i for i, a in enumerate(rest) if a.endswith(".py")]
        return _script_error(rest[scripts[0]], rest[scripts[0] + 1:]) if scripts else "torchrun without a script"
    if program in ("bash", "sh") and rest and not rest[0].startswith("-"):
        return None if (ROOT / rest[0]).is_file() else f"no script {rest[0]}"
    if program == "ray" and "--" in rest:  # ray job submit ... -- <entrypoint>
        return command_error(shlex.join(rest[rest.index("--") + 1:]))
    return None


def _errors(commands: list[Command]) -> list[str]:
    return [f"{c.source}: {c.text}\n    -> {error}" for c in commands if (error := command_error(c.text))]


def _program(command: Command) -> str:
    tokens = shlex.split(command.text, comments=True)
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    return tokens[0].removeprefix(".venv/bin/") if tokens else ""


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("steer-eval grid", "steer-eval tokens export-steered", "steer-eval judge"):
        assert command in reference  # generated from the parser at build time


def test_readme_is_a_front_page_with_the_setup_commands_first():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= README_LIMIT
    first_block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M).group(1).splitlines()
    assert first_block[:2] == SETUP_LINES
    assert [c.text for c in shell_commands(text, "README.md")][:2] == SETUP_LINES


def test_every_steer_eval_command_parses():
    commands = [c for c in all_commands() if _program(c) == "steer-eval" or "steer_eval.cli" in c.text]
    assert len(commands) >= 20  # the checker found the documented commands
    assert _errors(commands) == []


def test_every_lm_eval_command_names_a_known_model_and_existing_tasks():
    commands = [c for c in all_commands() if _program(c) in ("lm_eval", "lm-eval")]
    assert any(c.text == "lm_eval --model steering_vllm --tasks compose_2,compose_3" for c in commands)
    assert _errors(commands) == []


def test_every_script_command_names_a_file_and_its_flags():
    commands = [c for c in all_commands() if _program(c) in ("python", "python3", "torchrun", "bash", "sh", "ray")]
    assert any("trainers/train.py" in c.text for c in commands)
    assert any("benchmarks/" in c.text for c in commands)
    assert _errors(commands) == []


@pytest.mark.parametrize("text", [
    "steer-eval grid --no-such-flag --output-dir runs/x",
    "steer-eval grid --backend vllm --k 5 --output-dir runs/x",
    "steer-eval no-such-command",
    "steer-eval generate --steering german --control-method magic --prompt hi",
    ".venv/bin/steer-eval infer --data-path bundled --limit 0",
    "python -m steer_eval.cli analyze runs/x --no-such-flag",
    "lm_eval --model steering_nope --tasks compose_2",
    "lm_eval --model steering_vllm --tasks compose_22",
    "lm_eval --model steering_vllm --tasks steer_klingon,compose_2",
    "lm_eval --model hf --model-args pretrained=x --tasks compose_2",
    "lm_eval --model steering_hf",
    "python trainers/train.py --stage behaviour --no_such_field 1",
    "torchrun --standalone --nproc-per-node=2 trainers/train.py --lr_typo 1",
    "python trainers/build_data.py --behaviors german --no-such-flag",
    "python benchmarks/throughput.py --no-such-flag",
    "python benchmarks/no_such_benchmark.py",
    "python scripts/inference.py --data_path bundled --no-such-flag",
    "bash scripts/no_such_script.sh",
    "ray job submit --address http://h:8265 -- python -m steer_eval.cli grid --output-dir x --no-such-flag",
    'steer-eval verify --behavior german --text "unclosed',
    "lm_eval --model hf --model_args pretrained=$(steer-eval models fetch --no-such-flag) --tasks compose_2",
])
def test_the_checker_catches_a_wrong_command(text):
    assert command_error(text) is not None


def test_the_checker_reads_blocks_as_a_shell_would():
    markdown = "\n".join([
        "```bash", "# needs: gpu", "steer-eval grid --backend vllm \\", "    --no-such-flag --output-dir x", "```",
        "```text", "steer-eval grid --no-such-flag", "```",
        "```console", "$ steer-eval behaviors --json", "german language unseen respond in German", "```",
        "```sh", "# needs: cluster (the whole block)", "ray start --head", "# needs: network", "pip install x", "ray status", "```",
    ])
    commands = shell_commands(markdown, "example.md")
    assert [(c.source, c.needs) for c in commands] == [
        ("example.md:3", "gpu"), ("example.md:10", None),
        ("example.md:15", "cluster"), ("example.md:17", "network"), ("example.md:18", "cluster")]
    assert command_error(commands[0].text) is not None and command_error(commands[1].text) is None


# The cheap commands of README and docs, run: every `steer-eval` command that needs no vLLM engine (those, and the
# card's lm_eval command, run in tests/test_lmeval_cli.py on the same defaults). An output a page shows as a comment
# (`# {...}` under the command) must be the output; a `--file` the reader would bring is a short German response.
CHEAP_SUBCOMMANDS = {"models", "behaviors", "verify", "generate"}
STEER_EVAL = ("steer-eval", ".venv/bin/steer-eval")


def runnable_commands() -> list[tuple[Command, str | None]]:
    runnable = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for command in shell_commands(text, str(path.relative_to(ROOT))):
            args = shlex.split(command.text, comments=True)
            if args[0] not in STEER_EVAL or not (args[1] in CHEAP_SUBCOMMANDS or "--dry-run" in args):
                continue
            end = int(command.source.rsplit(":", 1)[1]) - 1
            while lines[end].rstrip().endswith("\\"):
                end += 1
            after = lines[end + 1].strip() if end + 1 < len(lines) else ""
            runnable.append((command, after[2:] if after.startswith("# {") else None))
    return runnable


@pytest.mark.e2e
def test_the_cheap_commands_of_the_docs_run_as_shown(default_model_dir, tmp_path, monkeypatch):
    from cli_in_process import cli
    monkeypatch.chdir(tmp_path)
    commands = runnable_commands()
    assert {shlex.split(c.text)[1] for c, _ in commands} >= CHEAP_SUBCOMMANDS | {"grid"}
    assert any(c.source.startswith("docs/") for c, _ in commands)
    assert any(shown for _, shown in commands)  # README's verify output, shown under it
    for command, shown in commands:
        args = shlex.split(command.text, comments=True)[1:]
        if "--file" in args and args[args.index("--file") + 1] != "-":
            (tmp_path / args[args.index("--file") + 1]).write_text("Katzen schnurren, wenn sie zufrieden sind.")
        if args[0] == "generate" and "--max-new-tokens" not in args:
            args += ["--max-new-tokens", "16"]  # the cap of the other docs tests: what runs is the command's path
        result = cli(*args, check=False)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert result.stdout.strip(), command
        if shown is not None:
            assert result.stdout.strip() == shown, command
