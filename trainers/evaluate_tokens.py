"""Held-out evaluation of steering tokens (steer_eval.training.token_eval): text vs steering vs hybrid per behaviour, and
for 2-behaviour compositions composition vs concatenation vs native_and vs text in both orders.

    # generate (GPU or CPU) through the one runner: <out_dir>/records.jsonl with its manifest, resumable
    python trainers/evaluate_tokens.py generate --singles german words_10_50 --pairs german+words_10_50 \
        --out_dir results/token_eval/records
    # judge and tabulate (re-verifies every response here, writes table.md and table.json)
    python trainers/evaluate_tokens.py summarize --records results/token_eval/records --out results/token_eval

All generations share one backend and go out in large chunks, so a GPU is kept busy.
"""
import argparse
import sys
from pathlib import Path

from steer_eval.backends.generation import DEFAULT_MAX_NEW_TOKENS
from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.steering.embedded import DEFAULT_MODEL
from steer_eval.training.token_eval import PAIR_CONDITIONS, SINGLE_METHODS, markdown, summarize


def generate(args) -> None:
    from steer_eval.runs.backend_spec import BackendSpec
    from steer_eval.backends.generation import GenerationConfig, chat_template_options
    from steer_eval.scoring.prompts import load_prompts
    from steer_eval.runs.runner import RECORDS_FILE, run
    from steer_eval.training.token_eval import plan

    pair_conditions = [c for c in PAIR_CONDITIONS if "/".join(c) in args.pair_conditions]
    requests = plan(load_prompts(args.prompts, args.split), args.singles, [tuple(p.split("+")) for p in args.pairs],
                    args.single_methods, pair_conditions, args.n_single, args.n_pair)
    spec = BackendSpec("hf", args.model, args.tokens_dir, {"batch_size": args.batch_size, "dtype": args.dtype,
                                                           "chat_template_kwargs": chat_template_options(
                                                               args.chat_template_kwargs)})
    # Large chunks: the HF backend sorts each chunk by length and fills a GPU with big batches.
    run(requests, spec, GenerationConfig(max_new_tokens=args.max_new_tokens), Path(args.out_dir) / RECORDS_FILE,
        chunk_size=4096, restart=args.restart)


def main(argv=None) -> int:
    show_on_stderr()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate")
    gen.add_argument("--model", default=DEFAULT_MODEL)
    gen.add_argument("--tokens_dir", default=None)
    gen.add_argument("--dtype", default="float32", help="float32 matches the CPU default; bfloat16 is faster")
    gen.add_argument("--prompts", default="bundled", help="'bundled' (its test split) or a prompt file")
    gen.add_argument("--singles", nargs="*", default=[])
    gen.add_argument("--single_methods", nargs="+", default=list(SINGLE_METHODS), choices=SINGLE_METHODS)
    gen.add_argument("--split", default="test", choices=("test", "val", "new_topics"),
                     help="bundled split: test for results, val for choosing between trainings, new_topics for "
                          "topics absent from training")
    gen.add_argument("--pairs", nargs="*", default=[], help="a+b; both orders are run")
    gen.add_argument("--pair_conditions", nargs="+", default=["/".join(c) for c in PAIR_CONDITIONS],
                     choices=["/".join(c) for c in PAIR_CONDITIONS])
    gen.add_argument("--n_single", type=int, default=None, help="first N test prompts per single condition")
    gen.add_argument("--n_pair", type=int, default=100, help="first N test prompts per pair condition")
    gen.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    gen.add_argument("--batch_size", type=int, default=256)
    gen.add_argument("--out_dir", required=True, help="records.jsonl and its manifest go here (resumable)")
    gen.add_argument("--restart", action="store_true", help="move the out_dir's records aside and start over")
    gen.add_argument("--chat_template_kwargs", default=None, metavar="JSON",
                     help="chat template options, e.g. '{\"enable_thinking\": false}'")
    summ = commands.add_parser("summarize")
    summ.add_argument("--records", nargs="+", required=True, help="folders of JSONL records")
    summ.add_argument("--out", required=True)
    summ.add_argument("--split", default="test", help="which prompts the records answer (for the table's title)")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
        else:
            print(markdown(summarize(args.records, args.out, args.split)))
    except UserError as error:
        print(f"evaluate_tokens.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
