"""`steer-eval ARGS` through the CLI's main(argv) in the test process, as the console script calls it: for tests of
the CLI contract that need no process of their own (exit status, stdout and stderr are what the script would give)."""
import contextlib
import io
import signal
import subprocess

from steer_eval.cli.main import main


def cli(*args, check=True) -> subprocess.CompletedProcess:
    """`steer-eval ARGS` in this process: its exit status, stdout and stderr."""
    stdout, stderr, sigterm = io.StringIO(), io.StringIO(), signal.getsignal(signal.SIGTERM)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        finally:
            signal.signal(signal.SIGTERM, sigterm)  # main() installs its own handler, as the script's process would
    result = subprocess.CompletedProcess(["steer-eval", *args], code, stdout.getvalue(), stderr.getvalue())
    if check:
        assert result.returncode == 0, result.stderr
    return result
