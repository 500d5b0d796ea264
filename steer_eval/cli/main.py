"""The `steer-eval` command line: behaviours, verify, models fetch, generate, infer, grid, analyze, score, judge,
tokens, compare, serve.

The library never imports this module. Every problem a user can fix is a `UserError`: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from steer_eval.steering.assembly import CONTROL_METHODS, MODES
from steer_eval.runs.backend_spec import BACKENDS, DEFAULT_CHUNK_SIZE
from steer_eval.backends.generation import DEFAULT_HF_BATCH_SIZE
from steer_eval.cli import reports as cli_reports
from steer_eval.cli.serve import add_serve_command, serve
from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS
from steer_eval.cli.types import chatty, non_negative, positive
from steer_eval import __version__
from steer_eval.errors import UserError, WorkerFailedError
from steer_eval.log import show_on_stderr
from steer_eval.backends.generation import DEFAULT_MAX_NEW_TOKENS, chat_template_options
from steer_eval.steering.embedded import DEFAULT_MODEL


def _add_generation_options(parser: argparse.ArgumentParser, backend_default: str, backends=BACKENDS) -> None:
    parser.add_argument("--backend", choices=backends, default=backend_default,
                        help="simulate: no model, fake responses and verdicts (for testing runs at scale)")
    parser.add_argument("--tokens-dir", "--tokens_dir", dest="tokens_dir", default=None,
                        help="folder holding <name>/vector.safetensors (default: the tokens shipped for MODEL)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=positive,
                        default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed; also picks the instruction paraphrases of text/hybrid control")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="what the model computes in (auto: vLLM-CPU runs fp32 checkpoints in bf16)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive,
                        default=DEFAULT_HF_BATCH_SIZE, help="HF backend only (vLLM schedules its own batches)")
    parser.add_argument("--chat-template-kwargs", "--chat_template_kwargs", dest="chat_template_kwargs", default=None,
                        metavar="JSON", help="options for the chat template, a JSON object, e.g. "
                                             "'{\"enable_thinking\": false}' for Qwen3 (part of the run identity)")
    parser.add_argument("--engine-log", "--engine_log", dest="engine_log", default=None, metavar="FILE",
                        help="vLLM only: where the engine's log lines go ('-': stderr; default: engine.log beside "
                             "the records, else $STEER_EVAL_HOME/logs/vllm-engine.log)")


def _add_steering_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steering", nargs="+", default=[], metavar="T",
                        help=f"behaviours in order; put {AND_TOKEN} between them for composition")
    parser.add_argument("--control-method", "--control_method", dest="control_method",
                        choices=CONTROL_METHODS, default="steering",
                        help="caa/prosv: activation vectors from the token store (HF backend only)")
    parser.add_argument("--mode", choices=MODES, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer-eval", description=__doc__)
    parser.add_argument("--version", action="version", version=f"steer-eval {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    behaviors = commands.add_parser("behaviors", help="list the behaviour registry")
    behaviors.add_argument("--json", action="store_true")

    verify = commands.add_parser("verify", help="judge a text against behaviours")
    verify.add_argument("--behavior", action="append", required=True, metavar="B")
    text = verify.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the response text")
    text.add_argument("--file", metavar="PATH", help="read the response from a UTF-8 file ('-': standard input)")

    models = commands.add_parser("models", help="embedded models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = models_commands.add_parser("fetch", help="download and convert an embedded model; print its folder")
    fetch.add_argument("name")

    generate = commands.add_parser("generate", help="generate one response")
    generate.add_argument("--model", default=DEFAULT_MODEL)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--verify", action="store_true", help="also print the verdict as JSON")
    _add_steering_options(generate)
    _add_generation_options(generate, backend_default="hf", backends=("hf", "vllm"))

    infer = commands.add_parser("infer", help="run a prompt file with one setting: a one-setting grid")
    infer.add_argument("--data_path", "--data-path", dest="data_path", default="bundled",
                       help="JSON/JSONL prompt file, or 'bundled' for the bundled test split")
    infer.add_argument("--model_path", "--model-path", "--model", dest="model_path", default=DEFAULT_MODEL)
    infer.add_argument("--limit", type=positive, default=None, help="only the first N prompts")
    infer.add_argument("--output", default=None,
                       help="JSONL file for the records, with OUTPUT's manifest beside it (resumes if it exists)")
    infer.add_argument("--restart", action="store_true",
                       help="move the records already in --output aside (kept, renamed) and start over")
    infer.add_argument("--silent", action="store_true", help="no per-prompt printing")
    _add_steering_options(infer)
    _add_generation_options(infer, backend_default="hf")

    grid = commands.add_parser("grid", help="every order of every combination, on Ray actors or in-process")
    grid.add_argument("--model", "--model_path", dest="model", default=DEFAULT_MODEL)
    grid.add_argument("--control-method", "--control_method", dest="control_methods", nargs="+",
                      choices=CONTROL_METHODS, default=["steering"],
                      help="caa/prosv: activation vectors from the token store (HF backend only)")
    grid.add_argument("--mode", dest="modes", nargs="+", choices=MODES, default=["composition"])
    grid.add_argument("--k", "--token_combinations", dest="ks", nargs="+", type=int, default=[1, 2],
                      choices=(1, 2, 3, 4), help="numbers of behaviours to compose")
    grid.add_argument("--combination", action="append", default=None, metavar="B1+B2",
                      help="only these combinations (repeatable), e.g. german+words_10_50")
    grid.add_argument("--max-combinations", type=positive, default=None, help="seeded subsample per k")
    grid.add_argument("--data_path", "--data-path", dest="data_path", default="bundled")
    grid.add_argument("--num-prompts", "--num_samples", dest="num_prompts", type=positive, default=50)
    grid.add_argument("--output-dir", required=True,
                      help="records.jsonl and its manifest go here; the same command resumes")
    grid.add_argument("--restart", action="store_true",
                      help="move the folder's records aside (kept, renamed) and start over")
    grid.add_argument("--actors", type=non_negative, default=0, help="Ray actors, one backend each (0: in this process)")
    grid.add_argument("--address", default=None, help="Ray cluster address, e.g. auto (default: local Ray)")
    grid.add_argument("--chunk-size", type=positive, default=DEFAULT_CHUNK_SIZE, help="requests per backend call")
    grid.add_argument("--dry-run", action="store_true",
                      help="print the plan (evaluations per k and setting, tokens needed and missing, an estimate) "
                           "and exit without loading a model")
    grid.add_argument("--first-instruction", action="store_true",
                      help="text/hybrid: each behaviour's first instruction instead of a seeded paraphrase")
    grid.add_argument("--tensor-parallel-size", "--tensor_parallel_size", dest="tensor_parallel_size", type=positive,
                      default=1, help="vLLM only: GPUs per engine (each actor takes that many)")
    grid.add_argument("--delay", type=float, default=0.0,
                      help="simulate backend only: seconds per evaluation, standing in for generation time")
    _add_generation_options(grid, backend_default="vllm")

    analyze = commands.add_parser("analyze", help="tables and plots from grid or infer records")
    analyze.add_argument("records", help="a records JSONL file, a folder of them (grid output) or a .tar.gz")
    analyze.add_argument("--plot", default=None, help="write a PNG with accuracy and order variance by k")
    analyze.add_argument("--json", action="store_true", help="print the summaries as JSON")
    analyze.add_argument("--rejudge", action="store_true",
                         help="judge every response again with this version's verifiers before summarising")
    analyze.add_argument("--html", default=None, metavar="OUT.html",
                         help="also write the run's results page (what `steer-eval report` writes)")
    cli_reports.add_page_options(analyze)
    cli_reports.add_inspection_commands(commands)
    cli_reports.add_judge_command(commands)
    add_serve_command(commands)
    score = commands.add_parser("score", help="fluency of every response under the unsteered model (resumable)")
    score.add_argument("records", help="a records JSONL file, a folder of them (grid output) or a .tar.gz")
    score.add_argument("--model", default=None, help="the base model (default: the one the records name)")
    score.add_argument("--output", default=None,
                       help="scores file (default: beside the records, <name>.fluency; analyze reads it)")
    _add_generation_options(score, backend_default="hf", backends=("hf", "vllm"))
    _add_log_options(parser)
    return parser


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    """-q / -v on every command, before or after its name: what the package logs on stderr (stdout is results)."""
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                        default=argparse.SUPPRESS, help="only warnings and errors on stderr")
    levels.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                        default=argparse.SUPPRESS, help="also debugging detail on stderr")
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for command in dict.fromkeys(action.choices.values()):
            _add_log_options(command)


def _backend_spec(args, model: str):
    from steer_eval.runs.backend_spec import BackendSpec
    tensor_parallel = getattr(args, "tensor_parallel_size", 1)
    options = {"hf": {"batch_size": args.batch_size}, "simulate": {"delay": getattr(args, "delay", 0.0)},
               "vllm": {"tensor_parallel_size": tensor_parallel} if tensor_parallel > 1 else {}}[args.backend]
    if args.backend == "vllm":
        options = {**options, "engine_log": args.engine_log or _engine_log_beside_records(args)}
    if args.dtype != "auto" and args.backend != "simulate":
        options = {**options, "dtype": args.dtype}
    if args.chat_template_kwargs and args.backend != "simulate":
        options = {**options, "chat_template_kwargs": chat_template_options(args.chat_template_kwargs)}
    return BackendSpec(args.backend, model, args.tokens_dir, options)


def _engine_log_beside_records(args) -> str | None:
    # Absolute: Ray actors need not share this process's working directory.
    if getattr(args, "output_dir", None):
        return str((Path(args.output_dir) / "engine.log").resolve())
    if getattr(args, "output", None):
        return str(Path(args.output).resolve().with_name("engine.log"))
    return None  # the backend's default under $STEER_EVAL_HOME


def _generation_config(args):
    from steer_eval.backends.generation import GenerationConfig
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
        from steer_eval.scoring.verdict import verify
        text = args.text if args.file is None else _read_text(args.file)
        print(json.dumps(verify(args.behavior, text).as_dict()))
        return 0
    if args.command == "models":
        from steer_eval.steering.embedded import fetch
        print(fetch(args.name))
        return 0
    commands = {"grid": _grid, "generate": _generate, "infer": _infer, "score": _score,
                "analyze": cli_reports.analyze, "report": cli_reports.report, "tokens": cli_reports.tokens,
                "compare": cli_reports.compare,
                "judge": cli_reports.judge, "serve": serve}
    return commands[args.command](args)


def _generate(args) -> int:
    from steer_eval.steering.assembly import parse_steering
    from steer_eval.runs.records import Request
    from steer_eval.runs.runner import run as run_requests

    behaviors, mode = parse_steering(args.steering, args.mode)
    request = Request("prompt", args.prompt, tuple(behaviors), args.control_method, mode, paraphrase_seed=args.seed)
    # Through the runner, so behaviours, tokens and the model are checked before any model loads.
    record = run_requests([request], _backend_spec(args, args.model), _generation_config(args),
                          progress=False).records()[0]
    print(record.response)
    if args.verify:
        print(json.dumps({"followed": record.followed, "per_behavior": record.per_behavior}))
    return 0


def _infer(args) -> int:
    from steer_eval.report.analysis import behavior_accuracy
    from steer_eval.steering.assembly import parse_steering
    from steer_eval.scoring.prompts import load_prompts
    from steer_eval.runs.records import Request
    from steer_eval.runs.runner import run as run_requests

    behaviors, mode = parse_steering(args.steering, args.mode)
    requests = [Request(p.id, p.prompt, tuple(behaviors), args.control_method, mode, paraphrase_seed=args.seed)
                for p in load_prompts(args.data_path)[:args.limit]]

    def show(records) -> None:
        if not args.silent:
            from tqdm.auto import tqdm
            for record in records:
                tqdm.write(f"[{'ok' if record.followed else 'x '}] {record.request.prompt[:60]!r} -> "
                           f"{record.response[:80]!r}", file=sys.stderr)

    spec = _backend_spec(args, args.model_path)
    records = run_requests(requests, spec, _generation_config(args), args.output,
                           progress=not args.silent and chatty(args), restart=args.restart, on_records=show).records()
    summary = {"behaviors": behaviors, "control_method": args.control_method, "mode": mode,
               "backend": spec.backend, "model": spec.model, "n": len(records), **behavior_accuracy(records)}
    print(json.dumps(summary, indent=2))
    return 0


def _grid(args) -> int:
    from pathlib import Path

    from steer_eval.runs.grid import build_grid
    from steer_eval.scoring.prompts import load_prompts
    from steer_eval.runs.records import read_records
    from steer_eval.report.outcomes import group_summaries
    from steer_eval.report.tables import markdown_table
    from steer_eval.runs.runner import RECORDS_FILE, dry_run
    from steer_eval.runs.runner import run as run_requests

    only = [c.split("+") for c in args.combination] if args.combination else None
    available = load_prompts(args.data_path)
    prompts = available[:args.num_prompts]
    if len(available) < args.num_prompts:
        logging.getLogger("steer_eval.cli").warning(
            "--num-prompts %d: %s holds %d prompts; the grid uses all %d (give a larger --data-path file for more)",
            args.num_prompts, "the bundled test split" if args.data_path == "bundled" else args.data_path,
            len(available), len(available))
    plan = build_grid(prompts, args.ks, args.control_methods, args.modes, args.max_combinations, args.seed, only,
                      args.first_instruction)
    if len(plan) == 0:
        raise UserError("the grid is empty: every --combination has a size not in --k; add its size to --k")
    spec, output = _backend_spec(args, args.model), Path(args.output_dir) / RECORDS_FILE
    if args.dry_run:
        print(_plan_text(plan, dry_run(plan, spec, output, args.actors)))
        return 0
    result = run_requests(plan, spec, _generation_config(args), output, actors=args.actors, address=args.address,
                          chunk_size=args.chunk_size, restart=args.restart, progress=chatty(args))
    if args.actors and result.per_node and chatty(args):
        print("evaluations per Ray node: " + ", ".join(f"{node[:12]} {count}" for node, count in
                                                       sorted(result.per_node.items())), file=sys.stderr)
    print(markdown_table(group_summaries(read_records(output))))
    return 0


def _plan_text(plan, summary: dict) -> str:
    lines = ["| k | control | mode | combinations | orders | evaluations |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['control_method']} | {r['mode']} | {r['combinations']} | {r['orders']} | "
              f"{r['evaluations']} |" for r in plan.describe()]
    lines.append(f"\n{summary['evaluations']} evaluations on {len(plan.prompts)} prompts; "
                 f"{summary['already_recorded']} already recorded, {summary['to_run']} to run")
    lines.append(f"steering tokens needed: {', '.join(summary['tokens_needed']) or 'none'}; "
                 f"missing: {', '.join(summary['tokens_missing']) or 'none'}")
    estimate = summary["estimate"]
    lines.append(f"estimate: {estimate['seconds']} s at {estimate['evaluations_per_second']} evaluations/s "
                 f"(measured by the last run into this folder: {estimate['measured']})" if estimate else
                 "estimate: none yet (no run into this folder has measured a rate; a small run, e.g. "
                 "--num-prompts 2, measures one)")
    return "\n".join(lines)


def _read_text(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        return data.decode("utf-8")
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}; give a readable text file or '-' for stdin") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}); convert it, e.g. with iconv") from None


def _score(args) -> int:
    from steer_eval.judges.fluency import plan_scores, score_records

    plan = plan_scores(args.records, args.output)  # bad records or a stale sidecar are refused before loading
    if not plan.todo:
        print(f"every record of {args.records} is already scored in {plan.output}", file=sys.stderr)
        return 0
    model = args.model or next((r.model for r in plan.todo if r.model), DEFAULT_MODEL)
    backend = _backend_spec(args, model).build()
    try:
        path = score_records(args.records, backend, batch_size=args.batch_size, plan=plan, progress=chatty(args))
    finally:
        backend.shutdown()
    print(f"fluency scores written to {path}; `steer-eval analyze {args.records}` shows them", file=sys.stderr)
    return 0


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # so SIGTERM (a scheduler's stop) cleans up like Ctrl-C: workers and Ray shut down


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_on_stderr(getattr(args, "log_level", logging.INFO))
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return run(args)
    except UserError as error:
        print(f"steer-eval: error: {error}", file=sys.stderr)
        return 2
    except WorkerFailedError as error:
        print(f"steer-eval: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("steer-eval: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped early (`| head`): point stdout at /dev/null so the exit flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141

