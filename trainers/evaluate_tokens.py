"""Held-out evaluation of steering tokens: text vs steering vs hybrid per behaviour, and for 2-behaviour
compositions composition vs concatenation vs native_and vs text in both orders (DESIGN.md §3).

    # generate (GPU or CPU) through the grid runner: <out_dir>/records.jsonl, resumable
    python trainers/evaluate_tokens.py generate --singles german words_10_50 --pairs german+words_10_50 \
        --out_dir results/token_eval/records
    # judge and tabulate (re-verifies every response here, writes table.md and table.json)
    python trainers/evaluate_tokens.py summarize --records results/token_eval/records --out results/token_eval

All generations share one backend and go out in large chunks, so a GPU is kept busy.
"""
import argparse
import json
import sys
from itertools import permutations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python trainers/evaluate_tokens.py` from a checkout
from steer_eval.behaviors import BEHAVIORS, get_behavior, resolve  # noqa: E402
from steer_eval.prompts import load_prompts  # noqa: E402

SINGLE_METHODS = ("text", "steering", "hybrid")
PAIR_CONDITIONS = (("text", "concatenation"), ("steering", "composition"), ("steering", "concatenation"),
                   ("steering", "native_and"))


def grid_items(prompts, singles, pairs, single_methods, pair_conditions, n_single, n_pair) -> list:
    from steer_eval.grid import GridItem

    items = []
    for b in singles:
        resolve([b])
        for method in single_methods:
            items += [GridItem(p.id, p.prompt, (b,), method, "composition") for p in prompts[:n_single]]
    for pair in pairs:
        resolve(pair)
        for order in permutations(pair):
            for method, mode in pair_conditions:
                items += [GridItem(p.id, p.prompt, order, method, mode) for p in prompts[:n_pair]]
    return items


def generate(args) -> None:
    from steer_eval.backends.base import GenerationConfig
    from steer_eval.runner import BackendSpec, run_grid

    pair_conditions = [c for c in PAIR_CONDITIONS if "/".join(c) in args.pair_conditions]
    items = grid_items(load_prompts(args.prompts, args.split), args.singles, [tuple(p.split("+")) for p in args.pairs],
                       args.single_methods, pair_conditions, args.n_single, args.n_pair)
    spec = BackendSpec("hf", args.model, args.tokens_dir, {"batch_size": args.batch_size, "dtype": args.dtype})
    # Large chunks: the HF backend sorts each chunk by length and fills a GPU with big batches.
    run_grid(items, spec, GenerationConfig(max_new_tokens=args.max_new_tokens), args.out_dir, chunk_size=4096)


def accuracy(records) -> float:
    return sum(r["followed"] for r in records) / len(records) if records else float("nan")


def summarize(args) -> dict:
    from steer_eval.analysis import by_combination, summarize as aggregate
    from steer_eval.inference import read_records
    from steer_eval.scoring import scorer_spec, verify

    by_condition: dict[tuple, list] = {}
    for path in sorted(p for folder in args.records for p in Path(folder).glob("*.jsonl")):
        for r in read_records(path):  # judged here, so every number comes from this checkout's verifiers
            r.update(verify(r["behaviors"], r["response"]).as_dict())
            pair = len(r["behaviors"]) > 1
            condition = ("text" if r["control_method"] == "text" else f"{r['control_method']}/{r['mode']}") \
                if pair else r["control_method"]
            by_condition.setdefault((pair, condition), []).append(r)

    singles: dict[str, dict] = {}
    for (pair, method), records in sorted(by_condition.items()):
        if not pair:
            for behavior in sorted({r["behaviors"][0] for r in records}, key=list(BEHAVIORS).index):
                subset = [r for r in records if r["behaviors"][0] == behavior]
                singles.setdefault(behavior, {})[method] = {"accuracy": accuracy(subset), "n": len(subset)}
    for row in singles.values():
        if "text" in row and "steering" in row and row["text"]["accuracy"]:
            row["steering_over_text"] = row["steering"]["accuracy"] / row["text"]["accuracy"]

    pairs: dict[str, dict] = {}
    pairs_aggregate = {}
    for (pair, condition), records in sorted(by_condition.items()):
        if not pair:
            continue
        summary = aggregate(records)
        for group in ("seen", "unseen"):
            if summary[group]["combinations"]:
                pairs_aggregate[f"{group}|{condition}"] = summary[group]
        for result in by_combination(records):
            entry = pairs.setdefault(result.combination, {"seen": result.seen, "conditions": {}})
            entry["conditions"][condition] = {"orders": result.order_accuracy, "mean": result.accuracy,
                                              "best": result.best_order_accuracy, "order_delta": result.order_delta_max}
    behaviors_used = sorted({b for records in by_condition.values() for r in records for b in r["behaviors"]})
    result = {"split": args.split, "singles": singles, "pairs": pairs,
              "pairs_aggregate": dict(sorted(pairs_aggregate.items())),
              "scorer": scorer_spec([]) | {"verifiers": [get_behavior(b).spec() for b in behaviors_used]},
              "records": [str(r) for r in args.records], "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _pct(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def markdown(result: dict) -> str:
    lines = [f"## Single behaviours (accuracy %, {result['split']} prompts)", "",
             "| behaviour | n | text | steering | hybrid | steering / text |", "|---|---|---|---|---|---|"]
    for b, row in result["singles"].items():
        n = next(iter(row.values()))["n"] if row else 0
        cells = [_pct(row.get(m, {}).get("accuracy")) for m in SINGLE_METHODS]
        lines.append(f"| {b} | {n} | {' | '.join(cells)} | {_pct(row.get('steering_over_text'))} |")
    if result["pairs"]:
        names = [f"{m}/{mode}" if m != "text" else "text" for m, mode in PAIR_CONDITIONS]
        lines += ["", "## Two-behaviour compositions (accuracy % averaged over both orders; Δ = order difference)", "",
                  "| group | condition | combinations | accuracy | mean Δ | max Δ |", "|---|---|---|---|---|---|"]
        for key, row in result["pairs_aggregate"].items():
            seen, condition = key.split("|")
            lines.append(f"| {seen} | {condition} | {row['combinations']} | {_pct(row['accuracy'])} | "
                         f"{_pct(row['order_variance'])} | {_pct(row['order_variance_max'])} |")
        lines += ["", "| combination | seen | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for key, combo in result["pairs"].items():
            cells = []
            for name in names:
                c = combo["conditions"].get(name)
                cells.append("–" if c is None else f"{_pct(c['mean'])} (Δ {_pct(c['order_delta'])})")
            lines.append(f"| {key} | {'seen' if combo['seen'] else 'unseen'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate")
    gen.add_argument("--model", default="smollm2-135m")
    gen.add_argument("--tokens_dir", default=None)
    gen.add_argument("--dtype", default="float32", help="float32 matches the CPU default; bfloat16 is faster")
    gen.add_argument("--prompts", default="bundled", help="'bundled' (its test split) or a prompt file")
    gen.add_argument("--singles", nargs="*", default=[])
    gen.add_argument("--single_methods", nargs="+", default=list(SINGLE_METHODS), choices=SINGLE_METHODS)
    gen.add_argument("--split", default="test", choices=("test", "val"),
                     help="bundled split: test for results, val for choosing between trainings")
    gen.add_argument("--pairs", nargs="*", default=[], help="a+b; both orders are run")
    gen.add_argument("--pair_conditions", nargs="+", default=["/".join(c) for c in PAIR_CONDITIONS],
                     choices=["/".join(c) for c in PAIR_CONDITIONS])
    gen.add_argument("--n_single", type=int, default=None, help="first N test prompts per single condition")
    gen.add_argument("--n_pair", type=int, default=100, help="first N test prompts per pair condition")
    gen.add_argument("--max_new_tokens", type=int, default=256)
    gen.add_argument("--batch_size", type=int, default=256)
    gen.add_argument("--out_dir", required=True)
    summ = commands.add_parser("summarize")
    summ.add_argument("--records", nargs="+", required=True, help="folders of JSONL records")
    summ.add_argument("--out", required=True)
    summ.add_argument("--split", default="test", help="which prompts the records answer (for the table's title)")
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args)
    else:
        summarize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
