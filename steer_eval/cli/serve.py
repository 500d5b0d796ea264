"""`steer-eval serve`: its options, and the hand-over to steer_eval.serving (which runs vLLM's own server). Imports
nothing heavy: every `steer-eval` command builds this parser."""
from __future__ import annotations

import argparse

from steer_eval.cli.types import positive
from steer_eval.steering.embedded import DEFAULT_MODEL


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1..65535, got {value}")
    return value


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve", help="vLLM's OpenAI-compatible server, steering chosen per request",
        description="vLLM's OpenAI-compatible server on MODEL, every steering token of the store in a spare row. "
                    "A request chooses its steering in its body: 'steering' (behaviour ids in order, <and> between "
                    "them), 'control_method' (steering, text, hybrid), 'mode', 'paraphrase_seed'. GET /v1/steering "
                    "lists the tokens and the engine's identity. Options after `--` go to vLLM's server "
                    "(`vllm serve --help`), e.g. `-- --max-num-seqs 64`.")
    serve.add_argument("--model", default=DEFAULT_MODEL, help="an embedded model name, a Hugging Face id or folder")
    serve.add_argument("--tokens-dir", "--tokens_dir", dest="tokens_dir", default=None,
                       help="the token store (default: the tokens shipped for MODEL)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: this machine only; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=port, default=8000)
    serve.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on /v1 (repeatable; or set VLLM_API_KEY, which "
                            "keeps the key out of the process list)")
    serve.add_argument("--steering-in-text", action="store_true",
                       help="let '<steer:NAME>' written in a message steer (default: refused with a 400, so "
                            "untrusted text cannot steer)")
    serve.add_argument("--spare-rows", type=positive, default=None,
                       help="embedding rows for steering tokens (at least the store's token count; default: the "
                            "vLLM backend's)")
    serve.add_argument("--max-model-len", type=positive, default=None,
                       help="context length (default: the vLLM backend's)")
    serve.add_argument("vllm_args", nargs="*", metavar="-- VLLM_OPTION", help="options for vLLM's server")


def serve(args) -> int:
    from steer_eval.serving.server import ServeOptions, serve as run_server

    run_server(ServeOptions(model=args.model, tokens_dir=args.tokens_dir, host=args.host, port=args.port,
                            api_keys=tuple(args.api_keys), steering_in_text=args.steering_in_text,
                            spare_rows=args.spare_rows, max_model_len=args.max_model_len,
                            vllm_args=tuple(args.vllm_args)))
    return 0
