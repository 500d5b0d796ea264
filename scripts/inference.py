"""The reference implementation's batch-inference entry point, on steer-eval's code (`steer-eval infer`).

    python scripts/inference.py --data_path data/test.json --model_path models/Llama-3.2-3B-Instruct/ \
        --steering words_10_50 "<and>" german --control-method steering --silent

Accepts the reference's flags (and every other `steer-eval infer` flag); the backend defaults to vLLM, as there.
"""
import sys

from steer_eval.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["infer", "--backend", "vllm", *sys.argv[1:]]))
