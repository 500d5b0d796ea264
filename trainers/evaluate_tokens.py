"""Held-out evaluation of steering tokens: text vs steering vs hybrid per behaviour, and for 2-behaviour
compositions composition vs concatenation vs native_and vs text in both orders (DESIGN.md §3).

    # generate (GPU or CPU; resumable; one JSONL file of records per condition)
    python trainers/evaluate_tokens.py generate --singles german words_10_50 --pairs german+words_10_50 \
        --out_dir results/token_eval/records
    # judge and tabulate (re-verifies every response here, writes table.md and table.json)
    python trainers/evaluate_tokens.py summarize --records results/token_eval/records --out results/token_eval

All generations share one backend and are pooled into large batches, so a GPU is kept busy.
"""
import argparse
import json
import sys
from itertools import permutations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python trainers/evaluate_tokens.py` from a checkout
from steer_eval.behaviors import BEHAVIORS, get_behavior, is_seen_combination, resolve  # noqa: E402
from steer_eval.prompts import load_prompts  # noqa: E402

SINGLE_METHODS = ("text", "steering", "hybrid")
PAIR_CONDITIONS = (("text", "concatenation"), ("steering", "composition"), ("steering", "concatenation"),
                   ("steering", "native_and"))
CHUNK = 4096  # generations between writes


def condition_name(method: str, mode: str, behaviors) -> str:
    return f"{method}-{mode}-{'+'.join(behaviors)}"


def conditions(singles, pairs, single_methods, pair_conditions=PAIR_CONDITIONS):
    for b in singles:
        for method in single_methods:
            yield method, "composition", (b,)
    for pair in pairs:
        for order in permutations(pair):
            for method, mode in pair_conditions:
                yield method, mode, order


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def generate(args) -> None:
    from tqdm.auto import tqdm

    from steer_eval.backends.base import GenerationConfig
    from steer_eval.backends.hf import HFBackend

    backend = HFBackend(args.model, tokens_dir=args.tokens_dir, batch_size=args.batch_size, dtype=args.dtype)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    pairs = [tuple(p.split("+")) for p in args.pairs]
    prompts = load_prompts(args.prompts, args.split)
    pair_conditions = [c for c in PAIR_CONDITIONS if "/".join(c) in args.pair_conditions]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for method, mode, behaviors in conditions(args.singles, pairs, args.single_methods, pair_conditions):
        resolve(behaviors)
        path = out_dir / f"{condition_name(method, mode, behaviors)}.jsonl"
        done = {r["id"] for r in read_records(path)}
        limit = args.n_single if len(behaviors) == 1 else args.n_pair
        todo += [(path, method, mode, behaviors, p) for p in prompts[:limit] if p.id not in done]
    print(f"{len(todo)} generations to make", file=sys.stderr)
    with tqdm(total=len(todo), desc="evaluate", unit="response") as bar:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            assembled = [backend.assemble(p.prompt, behaviors, control_method=method, mode=mode,
                                          paraphrase_seed=config.seed) for _, method, mode, behaviors, p in chunk]
            responses = backend.generate(assembled, config, progress=False)
            by_path: dict[Path, list] = {}
            for (path, *_, p), prompt_input, response in zip(chunk, assembled, responses):
                by_path.setdefault(path, []).append({"id": p.id, "prompt": p.prompt, **prompt_input.describe(),
                                                     "response": response, "model": args.model,
                                                     "generation": config.as_dict()})
            for path, records in by_path.items():
                with path.open("a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            bar.update(len(chunk))


def accuracy(records) -> float:
    return sum(r["followed"] for r in records) / len(records) if records else float("nan")


def summarize(args) -> dict:
    from steer_eval.scoring import scorer_spec, verify

    by_condition = {}
    for path in sorted(Path(args.records).glob("*.jsonl")):
        records = read_records(path)
        for r in records:  # judged here, so every number comes from this checkout's verifiers
            r.update(verify(r["behaviors"], r["response"]).as_dict())
        if records:
            first = records[0]
            by_condition[(first["control_method"], first["mode"], tuple(first["behaviors"]))] = records

    singles = {}
    for (method, mode, behaviors), records in by_condition.items():
        if len(behaviors) == 1:
            singles.setdefault(behaviors[0], {})[method] = {"accuracy": accuracy(records), "n": len(records)}
    for row in singles.values():
        if "text" in row and "steering" in row and row["text"]["accuracy"]:
            row["steering_over_text"] = row["steering"]["accuracy"] / row["text"]["accuracy"]

    combos = {}
    for (method, mode, behaviors), records in by_condition.items():
        if len(behaviors) == 2:
            key = "+".join(sorted(behaviors, key=list(BEHAVIORS).index))
            condition = f"{method}/{mode}" if method != "text" else "text"
            entry = combos.setdefault(key, {"seen": is_seen_combination(resolve(behaviors)), "conditions": {}})
            entry["conditions"].setdefault(condition, {})["+".join(behaviors)] = {
                "accuracy": accuracy(records), "n": len(records)}
    aggregate = {}
    for combo in combos.values():
        for condition, orders in combo["conditions"].items():
            values = [o["accuracy"] for o in orders.values()]
            orders_summary = {"mean": sum(values) / len(values), "best": max(values),
                              "order_delta": max(values) - min(values)}
            combo["conditions"][condition] = {"orders": orders, **orders_summary}
            group = aggregate.setdefault(("seen" if combo["seen"] else "unseen", condition), [])
            group.append(orders_summary)
    aggregate_rows = {f"{seen}|{condition}": {"combinations": len(rows),
                                              "accuracy": sum(r["mean"] for r in rows) / len(rows),
                                              "mean_order_delta": sum(r["order_delta"] for r in rows) / len(rows),
                                              "max_order_delta": max(r["order_delta"] for r in rows)}
                      for (seen, condition), rows in sorted(aggregate.items())}
    behaviors_used = sorted({b for _, _, bs in by_condition for b in bs})
    result = {"split": args.split, "singles": singles, "pairs": combos, "pairs_aggregate": aggregate_rows,
              "scorer": scorer_spec([]) | {"verifiers": [get_behavior(b).spec() for b in behaviors_used]},
              "records": str(args.records), "command": " ".join(sys.argv)}
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
                         f"{_pct(row['mean_order_delta'])} | {_pct(row['max_order_delta'])} |")
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
    summ.add_argument("--records", required=True)
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
