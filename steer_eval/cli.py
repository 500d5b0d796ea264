"""The `steer-eval` command line: behaviours, verify, models fetch, generate, infer."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from steer_eval.behaviors import AND_TOKEN, BEHAVIORS, BehaviorError
from steer_eval.models import DEFAULT_MODEL, ModelError
from steer_eval.prompts import PromptFileError
from steer_eval.tokens import TokenError

USER_ERRORS = (BehaviorError, TokenError, ModelError, PromptFileError)


def parse_steering(items: Sequence[str], mode: str | None) -> tuple[list[str], str]:
    """['german', '<and>', 'words_10_50'] -> (['german', 'words_10_50'], 'composition')."""
    behaviors = [item for item in items if item != AND_TOKEN]
    has_and = AND_TOKEN in items
    if has_and:
        expected = [x for b in behaviors for x in (AND_TOKEN, b)][1:]
        if list(items) != expected:
            raise BehaviorError(f"put {AND_TOKEN} between every two behaviours, e.g. german {AND_TOKEN} words_10_50")
        if mode not in (None, "composition"):
            raise BehaviorError(f"{AND_TOKEN} in --steering means mode composition, not {mode}")
        return behaviors, "composition"
    return behaviors, mode or ("concatenation" if len(behaviors) > 1 else "composition")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--steering", nargs="+", default=[], metavar="T",
                        help=f"behaviours in order; put {AND_TOKEN} between them for composition")
    parser.add_argument("--control-method", "--control_method", dest="control_method",
                        choices=("steering", "text", "hybrid"), default="steering")
    parser.add_argument("--mode", choices=("composition", "concatenation", "native_and"), default=None)
    parser.add_argument("--tokens-dir", "--tokens_dir", dest="tokens_dir", default=None,
                        help="folder holding <name>/vector.safetensors (default: models/<MODEL>/steering_tokens)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    behaviors = commands.add_parser("behaviors", help="list the behaviour registry")
    behaviors.add_argument("--json", action="store_true")

    verify = commands.add_parser("verify", help="judge a text against behaviours")
    verify.add_argument("--behavior", action="append", required=True, metavar="B")
    verify.add_argument("--text", required=True)

    models = commands.add_parser("models", help="embedded models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = models_commands.add_parser("fetch", help="download and convert an embedded model; print its folder")
    fetch.add_argument("name")

    generate = commands.add_parser("generate", help="generate one response")
    generate.add_argument("--model", default=DEFAULT_MODEL)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--verify", action="store_true", help="also print the verdict as JSON")
    _add_generation_options(generate)

    infer = commands.add_parser("infer", help="run a prompt file, write one record per prompt, print accuracy")
    infer.add_argument("--data_path", "--data-path", dest="data_path", default="bundled",
                       help="JSON/JSONL prompt file, or 'bundled' for the bundled test split")
    infer.add_argument("--model_path", "--model-path", "--model", dest="model_path", default=DEFAULT_MODEL)
    infer.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    infer.add_argument("--output", default=None, help="JSONL file for the records (resumes if it exists)")
    infer.add_argument("--silent", action="store_true", help="no per-prompt printing")
    _add_generation_options(infer)
    return parser


def _backend(args, model_spec: str):
    if args.backend == "vllm":
        from steer_eval.backends.vllm import VLLMBackend
        return VLLMBackend(model_spec, tokens_dir=args.tokens_dir)
    from steer_eval.backends.hf import HFBackend
    return HFBackend(model_spec, tokens_dir=args.tokens_dir, batch_size=args.batch_size)


def _generation_config(args):
    from steer_eval.backends.base import GenerationConfig
    return GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)


def run(args) -> int:
    if args.command == "behaviors":
        rows = [{"id": b.id, "category": b.category, "unseen": b.unseen, "verifier": b.verifier,
                 "params": b.params, "description": b.description} for b in BEHAVIORS.values()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['id']:<14} {row['category']:<10} {'unseen' if row['unseen'] else 'seen':<7} "
                      f"{row['description']}")
        return 0
    if args.command == "verify":
        from steer_eval.scoring import verify
        print(json.dumps(verify(args.behavior, args.text).as_dict()))
        return 0
    if args.command == "models":
        from steer_eval.models import fetch
        print(fetch(args.name))
        return 0
    behaviors, mode = parse_steering(args.steering, args.mode)
    if args.command == "generate":
        from steer_eval.scoring import verify
        backend = _backend(args, args.model)
        assembled = backend.assemble(args.prompt, behaviors, control_method=args.control_method, mode=mode,
                                     paraphrase_seed=args.seed)
        response = backend.generate([assembled], _generation_config(args), progress=False)[0]
        print(response)
        if args.verify:
            print(json.dumps(verify(behaviors, response).as_dict()))
        return 0
    from steer_eval.inference import run_inference
    summary = run_inference(_backend(args, args.model_path), args.data_path, behaviors,
                            control_method=args.control_method, mode=mode, config=_generation_config(args),
                            limit=args.limit, output=args.output, silent=args.silent)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as error:
        print(f"steer-eval: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steer-eval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
