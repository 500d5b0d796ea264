"""Where the vLLM engine's own log lines go: a file by default, so a run's tables and results stand out.

vLLM configures its `vllm` logger from environment variables when an engine starts, in this process and in the
engine-core child process. So the route is set twice: a logging config file named by VLLM_LOGGING_CONFIG_PATH for
what vLLM configures later, and the same config applied here at once for lines logged before that.
"""
from __future__ import annotations

import json
import logging.config
import os
from pathlib import Path

STDERR = "-"


def default_engine_log() -> Path:
    from steer_eval.steering.model_store import home
    return home() / "logs" / "vllm-engine.log"


def route_vllm_logs(destination: str | Path) -> str:
    """Send vLLM's log lines to `destination` (a file, appended; "-" keeps them on stderr); returns where."""
    if str(destination) == STDERR:
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays for results
        return "stderr"
    path = Path(destination).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a driver's folder on a node that lacks it: the node's own default folder
        path = default_engine_log()
        path.parent.mkdir(parents=True, exist_ok=True)
    config = {"version": 1, "disable_existing_loggers": False,
              "formatters": {"plain": {"format": "%(levelname)s %(asctime)s %(process)d %(name)s: %(message)s"}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "mode": "a",
                                    "formatter": "plain", "encoding": "utf-8"}},
              "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}}
    config_path = path.with_name(path.name + ".logging.json")
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_path)
    logging.config.dictConfig(config)
    return str(path)
