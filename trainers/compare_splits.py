"""Single-behaviour accuracy of several token sets and the text instruction on several prompt splits, in one table
(results/token_eval/topics/): does what the tokens learned carry over to topics they were never trained on?

Each --column names a split, a label, the control method and a folder of records (trainers/evaluate_tokens.py
generate); columns with the same split and label are merged (e.g. tokens evaluated in two runs). Every record is judged again with this checkout's verifiers. Ratios are steering accuracy over the text
column of the same split, on the same prompts.

    python trainers/compare_splits.py --out results/token_eval/topics \
        --column test text text /tmp/test_records --column test shipped steering /tmp/test_records \
        --column new_topics text text /tmp/topics_records --column new_topics shipped steering /tmp/topics_records
"""
import argparse
import json
import sys
from pathlib import Path

from steer_eval.log import show_on_stderr
from steer_eval.runs.records import iter_records, rejudge
from steer_eval.scoring.behaviors import BEHAVIORS
from steer_eval.training.token_eval import accuracy


def column(folder: str, method: str) -> dict:
    by_behavior: dict[str, list] = {}
    for record in iter_records(folder):
        if record.control_method == method and len(record.behaviors) == 1:
            by_behavior.setdefault(record.behaviors[0], []).append(rejudge(record))
    return {b: {"accuracy": accuracy(rs), "n": len(rs), "prompts": sorted(r.prompt_id for r in rs)}
            for b, rs in by_behavior.items()}


def markdown(table: dict) -> str:
    lines = []
    for split, columns in table["splits"].items():
        labels = [label for label in columns if label != "text"]
        lines += [f"## {split}", "",
                  "| behaviour | n | text | " + " | ".join(labels) + " | " +
                  " | ".join(f"{label} / text" for label in labels) + " |",
                  "|---|---|---|" + "---|" * (2 * len(labels))]
        behaviors = [b for b in BEHAVIORS if any(b in c for c in columns.values())]
        for b in behaviors:
            text = columns.get("text", {}).get(b, {}).get("accuracy")
            values = [columns[label].get(b, {}).get("accuracy") for label in labels]
            n = next(c[b]["n"] for c in columns.values() if b in c)
            cells = ["–" if v is None else f"{100 * v:.1f}" for v in values]
            ratios = [f"{100 * v / text:.1f}" if text and v is not None else "–" for v in values]
            lines.append(f"| {b} | {n} | " + ("–" if text is None else f"{100 * text:.1f}") + " | "
                         + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    show_on_stderr()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--column", nargs=4, action="append", required=True,
                        metavar=("SPLIT", "LABEL", "METHOD", "RECORDS"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    splits: dict[str, dict] = {}
    for split, label, method, folder in args.column:
        if not Path(folder).is_dir():
            print(f"compare_splits.py: error: {folder} is not a folder of records", file=sys.stderr)
            return 2
        splits.setdefault(split, {}).setdefault(label, {}).update(column(folder, method))  # a label may span folders
    for columns in splits.values():  # a ratio only means something on the same prompts
        for b in set.intersection(*(set(c) for c in columns.values())):
            if len({tuple(c[b]["prompts"]) for c in columns.values()}) > 1:
                print(f"compare_splits.py: error: the columns of one split answer different prompts ({b}); "
                      "generate them with the same --split and --n_single", file=sys.stderr)
                return 2
    table = {"splits": splits, "command": "python trainers/compare_splits.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(table, indent=1))
    (out / "table.md").write_text(markdown(table))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
