"""CAA baseline: contrastive vectors for each behaviour, a layer x multiplier sweep on the val split, and the chosen
vectors saved to the token store as caa/<behaviour> (steer_eval/training/caa.py has the method).

    python trainers/caa.py --behaviors german words_10_50 --layers 4 8 12 16 20 --multipliers 2 4 8 \
        --report results/baselines/caa_sweep

The sweep generates every behaviour alone on the first --sweep_prompts val prompts for each (layer, multiplier)
and keeps the pair with the best mean accuracy (ties: the smaller multiplier, which costs less fluency). One
layer and multiplier serve every behaviour, so compositions add vectors of one layer. The report keeps each
candidate's accuracy and repetition, so the choice can be checked.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from steer_eval.backends.generation import DEFAULT_MAX_NEW_TOKENS, GenerationConfig
from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.steering.embedded import DEFAULT_MODEL
from steer_eval.training.caa import caa_token, contrastive_means


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--behaviors", nargs="+", required=True)
    parser.add_argument("--tokens_dir", default=None, help="store to write caa/<behaviour> into")
    parser.add_argument("--layers", nargs="+", type=int, required=True, help="candidate decoder layers")
    parser.add_argument("--multipliers", nargs="+", type=float, required=True, help="candidate multipliers")
    parser.add_argument("--train_prompts", type=int, default=400,
                        help="first N train prompts (400: those on the 31 topics val and test share)")
    parser.add_argument("--sweep_prompts", type=int, default=24, help="first N val prompts per candidate")
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--report", required=True, help="folder for sweep.json and sweep.md")
    return parser.parse_args(argv)


def sweep(backend, means, behaviors, layers, multipliers, prompts, config) -> list[dict]:
    """One row per (layer, multiplier): accuracy and mean repetition per behaviour on the sweep prompts."""
    from steer_eval.scoring.quality import measure
    from steer_eval.scoring.verdict import verify

    rows = []
    for layer in layers:
        for multiplier in multipliers:
            backend.use_activation_vectors([caa_token(b, means[b][layer], layer, multiplier, backend.identity)
                                            for b in behaviors])
            assembled = [backend.assemble(p.prompt, [b], control_method="caa") for b in behaviors for p in prompts]
            texts = backend.generate(assembled, config, progress=False)
            row = {"layer": layer, "multiplier": multiplier, "accuracy": {}, "repetition": {}}
            for b in behaviors:
                mine = [t for a, t in zip(assembled, texts) if a.behaviors == (b,)]
                row["accuracy"][b] = sum(verify([b], t).followed for t in mine) / len(mine)
                row["repetition"][b] = sum(measure(t)["repetition"] for t in mine) / len(mine)
            row["mean_accuracy"] = sum(row["accuracy"].values()) / len(behaviors)
            row["mean_repetition"] = sum(row["repetition"].values()) / len(behaviors)
            print(f"layer {layer:>2} x{multiplier:<5g} accuracy {row['mean_accuracy']:.3f} "
                  f"repetition {row['mean_repetition']:.3f}", flush=True)
            rows.append(row)
    return rows


def markdown(rows, behaviors, chosen) -> str:
    lines = ["| layer | multiplier | mean accuracy | mean repetition | " + " | ".join(behaviors) + " |",
             "|---|---|---|---|" + "---|" * len(behaviors)]
    for row in rows:
        mark = " **(chosen)**" if row is chosen else ""
        lines.append(f"| {row['layer']} | {row['multiplier']:g}{mark} | {100 * row['mean_accuracy']:.1f} | "
                     f"{row['mean_repetition']:.2f} | "
                     + " | ".join(f"{100 * row['accuracy'][b]:.1f}" for b in behaviors) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    show_on_stderr()
    args = parse_args(argv)
    try:
        from steer_eval.backends.hf import HFBackend
        from steer_eval.scoring.behaviors import get_behavior

        behaviors = [get_behavior(b).id for b in dict.fromkeys(args.behaviors)]
        backend = HFBackend(args.model, tokens_dir=args.tokens_dir, dtype=args.dtype, batch_size=args.batch_size)
        train = [p.prompt for p in bundled_prompts("train")][:args.train_prompts]
        started = time.time()
        means = {b: contrastive_means(backend.model, backend.tokenizer, train, b, args.layers) for b in behaviors}
        print(f"contrastive means of {len(behaviors)} behaviours x {len(args.layers)} layers from {len(train)} "
              f"train prompts in {time.time() - started:.1f} s", flush=True)
        config = GenerationConfig(max_new_tokens=args.max_new_tokens)
        rows = sweep(backend, means, behaviors, args.layers, args.multipliers,
                     bundled_prompts("val")[:args.sweep_prompts], config)
        chosen = max(rows, key=lambda r: (r["mean_accuracy"], -r["multiplier"]))
        settings = {"train_prompts": len(train), "sweep_prompts": args.sweep_prompts, "split": "val",
                    "layers": args.layers, "multipliers": args.multipliers, "max_new_tokens": args.max_new_tokens,
                    "dtype": args.dtype, "chosen": {"layer": chosen["layer"], "multiplier": chosen["multiplier"]}}
        for b in behaviors:
            backend.store.save(caa_token(b, means[b][chosen["layer"]], chosen["layer"], chosen["multiplier"],
                                         backend.identity, settings))
        report = Path(args.report)
        report.mkdir(parents=True, exist_ok=True)
        (report / "sweep.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
        (report / "sweep.md").write_text(markdown(rows, behaviors, chosen))
        print(f"chose layer {chosen['layer']} x{chosen['multiplier']:g}; saved caa/{{{','.join(behaviors)}}} to "
              f"{backend.store.directory}", flush=True)
    except UserError as error:
        print(f"caa.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
