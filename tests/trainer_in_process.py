"""`python trainers/train.py ARGS` through the script's main(argv) in the test process: its exit status, stdout and
stderr, as its own process would give them (a refusal is SystemExit(2) with one logged line on stderr)."""
import contextlib
import io
import subprocess

from trainers.train import main


def train(*args) -> subprocess.CompletedProcess:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(list(args))
            code = 0
        except SystemExit as exit:
            code = exit.code
    return subprocess.CompletedProcess(["trainers/train.py", *args], code, stdout.getvalue(), stderr.getvalue())
