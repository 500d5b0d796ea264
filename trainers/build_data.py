"""Teacher data for the trainer (steer_eval.training.teacher): the frozen model's responses to prompts with an instruction.

Every generation is a record in `<out_dir>/records_<split>.jsonl` (with its manifest; an interrupted run resumes
where it stopped); the training files `<out_dir>/<category>/<behaviour>_<split>.json` and
`<out_dir>/and/<b1>+<b2>_<split>.json` are exported from it. `--filter` keeps only responses that follow.

    python trainers/build_data.py --behaviors german words_10_50 --samples 3 --temperature 0.7 --filter
    python trainers/build_data.py --behaviors spanish french words_10_50 --pairs seen --filter
"""
import argparse
import sys

from steer_eval.backends.generation import DEFAULT_MAX_NEW_TOKENS, GenerationConfig, chat_template_options
from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.steering.embedded import DEFAULT_MODEL


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviors", nargs="+", required=True, metavar="B")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="P",
                        help="'seen' (cross-category pairs of the seen --behaviors) or explicit pairs a+b")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--dtype", default="auto", help="model weights: auto|float32|bfloat16")
    parser.add_argument("--prompts", default="bundled", help="'bundled' or a JSON/JSONL prompt file")
    parser.add_argument("--split", default="train", help="bundled split (train|val); the test split is refused")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--samples", type=int, default=1, help="responses per prompt, each with its own paraphrase")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch_size", type=int, default=64, help="HF backend: prompts per generate() call")
    parser.add_argument("--filter", action="store_true", help="keep only responses that pass the verifier")
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--restart", action="store_true", help="move the out_dir's records aside and start over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat_template_kwargs", default=None, metavar="JSON",
                        help="chat template options, e.g. '{\"enable_thinking\": false}' (train.py takes the same)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    show_on_stderr()
    from steer_eval.training.teacher import build

    args = parse_args(argv)
    try:
        options = ({"dtype": args.dtype, "chat_template_kwargs": chat_template_options(args.chat_template_kwargs)}
                   | ({"batch_size": args.batch_size} if args.backend == "hf" else {}))
        build(args.behaviors, pairs=args.pairs, spec=BackendSpec(args.backend, args.model, None, options),
              config=GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      seed=args.seed),
              prompts=args.prompts, split=args.split, limit=args.limit, samples=args.samples,
              keep_failed=not args.filter, out_dir=args.out_dir, restart=args.restart)
    except UserError as error:
        print(f"build_data.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
