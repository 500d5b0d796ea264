"""The package's log. Every module logs under the `steer_eval` logger and never prints; a face (the command line,
the lm-eval adapter, a trainer script) decides what shows. In a notebook or another program, configure logging as
usual, e.g. `logging.basicConfig(level=logging.INFO)`."""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("steer_eval")
_PREFIXES = {logging.DEBUG: "steer-eval: debug: ", logging.INFO: "steer-eval: ", logging.WARNING: "steer-eval: warning: ",
             logging.ERROR: "steer-eval: error: ", logging.CRITICAL: "steer-eval: error: "}


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _PREFIXES.get(record.levelno, "steer-eval: ") + record.getMessage()


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (a redirected or captured stderr included)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_on_stderr(level: int = logging.INFO, unless_configured: bool = False) -> None:
    """Show the package's log lines at `level` and above on stderr, one plain line each. With `unless_configured`,
    leave alone a program that has configured logging itself (a handler on the root or the package logger)."""
    ours = [handler for handler in LOGGER.handlers if isinstance(handler, _CurrentStderr)]
    if unless_configured and not ours and (logging.getLogger().handlers or LOGGER.handlers):
        return
    if not ours:
        handler = _CurrentStderr()
        handler.setFormatter(_Lines())
        LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
