"""`python trainers/train.py ARGS` (or another script of trainers/, scripts/, benchmarks/) through the script's
main(argv) in the test process: its exit status, stdout and stderr, as its own process would give them (a refusal
is SystemExit(2) with one logged line on stderr)."""
import contextlib
import importlib
import io
import subprocess


def script(path: str, *args) -> subprocess.CompletedProcess:
    """`python PATH ARGS`, PATH one of the repository's scripts (imported as a module of its namespace package).
    scripts/run_ordering_experiments.py hands its translated arguments to the CLI's main, as its __main__ does."""
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            argv = module.translate(list(args)) if hasattr(module, "translate") else list(args)
            returned = module.main(argv)  # train.py's main returns its run (tests read it), the others a status
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exit:
            code = exit.code
    return subprocess.CompletedProcess([path, *args], code, stdout.getvalue(), stderr.getvalue())


def train(*args) -> subprocess.CompletedProcess:
    return script("trainers/train.py", *args)
