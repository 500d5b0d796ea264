"""`steer-eval serve`: vLLM's own OpenAI-compatible server (its app, routes, batching, streaming, /health,
/v1/models, API-key check) on the served model folder, with steering chosen per request (middleware.py).

The engine runs with the settings the vLLM backend would use for the same model (max_model_len, seed, and on CPU
eager mode, float32 without native bfloat16 and a 2 GiB KV cache), so a greedy steered request answers what
`steering_vllm` answers. Options after `--` go to vLLM's own parser and win over these.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from steer_eval.backends.extended_vocab import DEFAULT_SPARE_ROWS
from steer_eval.backends.vllm import WORKER_EXTENSION, VLLMBackend
from steer_eval.compat import check_supported
from steer_eval.errors import UserError
from steer_eval.serving.middleware import install
from steer_eval.serving.served_model import serve_steering, served_token_names
from steer_eval.steering.models import model_label
from steer_eval.steering.tokens import TokenStore, default_tokens_dir

log = logging.getLogger(__name__)
MIDDLEWARE = "steer_eval.serving.middleware.SteeringMiddleware"
# What steer-eval sets itself: given after `--` they would serve another model or lose the steering.
RESERVED = {"--model": "serve's --model", "--tokenizer": "serve's --model", "--host": "serve's --host",
            "--port": "serve's --port", "--api-key": "serve's --api-key",
            "--worker-extension-cls": "nothing (steering needs steer-eval's)"}


@dataclass(frozen=True)
class ServeOptions:
    model: str
    tokens_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    steering_in_text: bool = False
    spare_rows: int | None = None  # None: the vLLM backend's default
    max_model_len: int | None = None  # None: the vLLM backend's default
    vllm_args: tuple[str, ...] = ()


def engine_flags(engine_kwargs: dict) -> list[str]:
    """The backend's engine keyword arguments as vLLM's command-line flags."""
    flags = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def check_reserved(vllm_args: tuple[str, ...]) -> None:
    for arg in vllm_args:
        name = arg.split("=", 1)[0]
        if name in RESERVED:
            raise UserError(f"{name} after `--` is set by steer-eval serve; use {RESERVED[name]}")


def vllm_server_args(options: ServeOptions, backend: VLLMBackend, folder) -> argparse.Namespace:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    ours = ["--model", str(folder), "--tokenizer", str(folder), "--served-model-name", options.model,
            "--host", options.host, "--port", str(options.port), "--worker-extension-cls", WORKER_EXTENSION,
            "--middleware", MIDDLEWARE, *engine_flags(backend.engine_kwargs)]
    for key in options.api_keys:
        ours += ["--api-key", key]
    parser = make_arg_parser(FlexibleArgumentParser(prog="steer-eval serve ... --"))
    try:
        args = parser.parse_args([*ours, *options.vllm_args])
    except SystemExit:
        raise UserError(f"vLLM does not take the options after `--`: {' '.join(options.vllm_args)} (see "
                        "`vllm serve --help`)") from None
    if getattr(args, "api_server_count", 1) not in (None, 1):
        raise UserError("--api-server-count: steer-eval serve runs one API server process (its steering state "
                        "lives there); scale with --data-parallel-size or several servers")
    validate_parsed_serve_args(args)
    return args


def serve(options: ServeOptions) -> None:
    """Start the server; returns when it stops (Ctrl-C, SIGTERM)."""
    import uvloop
    import vllm
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.entry import run_server

    check_supported("vllm", vllm.__version__)
    check_reserved(options.vllm_args)  # every check that needs no model folder comes first
    spare_rows = options.spare_rows or DEFAULT_SPARE_ROWS
    served_token_names(TokenStore(options.tokens_dir or default_tokens_dir(model_label(options.model))), spare_rows)
    context = {"max_model_len": options.max_model_len} if options.max_model_len else {}
    backend = VLLMBackend(options.model, options.tokens_dir, spare_rows=spare_rows, engine_log="-", **context)
    served = serve_steering(backend, options.steering_in_text)
    args = vllm_server_args(options, backend, served.folder)
    keys = tuple(key for key in (args.api_key or [envs.VLLM_API_KEY]) if key)
    install(served, keys)
    log.info(f"serving {options.model} with {len(served.token_ids)} steering tokens on "
             f"http://{options.host}:{options.port}/v1 (API key {'required' if keys else 'not set'})")
    uvloop.run(run_server(args))
