"""The reference implementation's ordering experiment, on steer-eval's runner (`steer-eval grid`).

    python scripts/run_ordering_experiments.py --data_path data/test.json --model_path models/Llama-3.2-3B-Instruct/ \
        --control_method steering --mode composition --token_combinations 1 2 3 4 --num_samples 300 \
        --tensor_parallel_size 1 --notes "Steering tokens with <and> composition"

The reference's flags map onto the grid: --num_samples = prompts per setting; without --sample_random_instruction
text and hybrid use each behaviour's first instruction (with it: a seeded paraphrase per prompt); --notes is kept
in the run's manifest (its command line). Records go to --output_dir (default
results/ordering/<control_method>_<mode>), resumable like any grid; every other `steer-eval grid` flag
(--actors, --address, --backend, --dry-run, ...) passes through.
"""
import argparse
import sys

from steer_eval.cli.main import main


def translate(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="bundled")
    parser.add_argument("--model_path", default=None)
    parser.add_argument("--control_method", default="steering", choices=("steering", "text", "hybrid"))
    parser.add_argument("--mode", default="composition", choices=("composition", "concatenation", "native_and"))
    parser.add_argument("--token_combinations", nargs="+", default=["1", "2", "3", "4"])
    parser.add_argument("--num_samples", default="300")
    parser.add_argument("--tensor_parallel_size", default="1")
    parser.add_argument("--sample_random_instruction", action="store_true")
    parser.add_argument("--notes", default="")
    parser.add_argument("--output_dir", default=None)
    args, rest = parser.parse_known_args(argv)
    grid = ["grid", "--data_path", args.data_path, "--control-method", args.control_method, "--mode", args.mode,
            "--k", *args.token_combinations, "--num-prompts", args.num_samples,
            "--tensor-parallel-size", args.tensor_parallel_size,
            "--output-dir", args.output_dir or f"results/ordering/{args.control_method}_{args.mode}"]
    if args.model_path:
        grid += ["--model", args.model_path]
    if not args.sample_random_instruction:
        grid.append("--first-instruction")
    if "--backend" not in rest:
        grid += ["--backend", "vllm"]  # the reference runs one persistent vLLM instance
    return grid + rest


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
