"""Training speed of trainers/train.py: seconds per step and tokens per second, written to results/bench/.

    # a short measured run here (the first step is a warm-up and not counted)
    python benchmarks/bench_train.py run --data data/language/german_train.json --batch_size 8 --steps 6
    # the numbers of a finished training (e.g. one made on a lent GPU), read from its log.jsonl
    python benchmarks/bench_train.py log --log results/training/round2/behaviour/log.jsonl --label h200

Tokens are the student's sequence tokens (prompt + steering slot + response); each step also runs the teacher
over the same response with the instruction prompt, under no_grad.
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _trainer():
    spec = importlib.util.spec_from_file_location("train", REPO / "trainers" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()  # the CPU is shared: record how busy it was
    return info


def speed(entries: list[dict], skip_first: bool) -> dict:
    steps = [e for e in entries if "s_per_step" in e]
    if skip_first:
        steps = [e for e in steps if e["step"] > 1]
    seconds = sum(e["s_per_step"] for e in steps)
    return {"steps_measured": len(steps), "s_per_step": seconds / len(steps),
            "tokens_per_s": sum(e["tokens_per_s"] * e["s_per_step"] for e in steps) / seconds}


def run(args) -> dict:
    trainer = _trainer()
    with tempfile.TemporaryDirectory() as work:
        config = trainer.TrainConfig(model=args.model, data=[args.data], out_dir=work, tokens_dir=work,
                                     batch_size=args.batch_size, epochs=100, stop_after=args.steps, log_every=1,
                                     checkpoint_every=10 ** 9, autocast=args.autocast, device=args.device,
                                     lr=3e-3)
        trainer.train(config)
        entries = [json.loads(line) for line in (Path(work) / "log.jsonl").read_text().splitlines()]
    return {"label": args.label, "batch_size": args.batch_size, "autocast": args.autocast, "data": args.data,
            **speed(entries, skip_first=True)}


def from_log(args) -> dict:
    entries = [json.loads(line) for line in Path(args.log).read_text().splitlines()]
    summary = json.loads((Path(args.log).parent / "summary.json").read_text())
    return {"label": args.label, "log": args.log, "batch_size": summary["batch_size"],
            "device": summary["summary"]["device"], "bf16": summary["summary"]["bf16"],
            "total_steps": summary["summary"]["steps"], "seconds": summary["summary"]["seconds_this_run"],
            **speed(entries, skip_first=False)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    measured = commands.add_parser("run")
    measured.add_argument("--model", default="smollm2-135m")
    measured.add_argument("--data", required=True)
    measured.add_argument("--batch_size", type=int, default=8)
    measured.add_argument("--steps", type=int, default=6)
    measured.add_argument("--autocast", default="auto")
    measured.add_argument("--device", default="auto")
    measured.add_argument("--label", default="cpu")
    logged = commands.add_parser("log")
    logged.add_argument("--log", required=True)
    logged.add_argument("--label", required=True)
    logged.add_argument("--machine", required=True, help="where the logged training ran, in words")
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = parser.parse_args(argv)
    result = run(args) if args.command == "run" else from_log(args)
    result |= {"command": "python " + " ".join(sys.argv),
               "machine": machine() if args.command == "run" else args.machine}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_speed_{args.label}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
