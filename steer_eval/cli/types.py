"""Argument types the command-line modules share (cli.py, cli_reports.py)."""
from __future__ import annotations

import argparse
import logging


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def chatty(args) -> bool:
    """Progress bars and notes on stderr, unless -q."""
    return getattr(args, "log_level", logging.INFO) <= logging.INFO
