"""Teacher data for the trainer: the frozen model's responses to prompts carrying a behaviour's instruction.

For every target (one behaviour, or a pair for `<and>`) and every prompt, `--samples` responses are generated
with a sampled paraphrase of the instruction (text control, `assemble(..., control_method="text")`), verified,
and written to `<out_dir>/<category>/<behaviour>_<split>.json` (pairs: `<out_dir>/and/<b1>+<b2>_<split>.json`).
Each record holds prompt, response, behaviours, the instruction used and the verdict; `--filter` keeps only
responses that follow the instruction. Every generation also goes to `<file>.all.jsonl` as it is made, so an
interrupted run resumes where it stopped.

    python trainers/build_data.py --behaviors german words_10_50 --samples 3 --temperature 0.7 --filter
    python trainers/build_data.py --behaviors spanish french words_10_50 --pairs seen --filter
"""
import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python trainers/build_data.py` from a checkout
from steer_eval.behaviors import AND_TOKEN, BehaviorError, compatible_combinations, get_behavior, resolve  # noqa: E402
from steer_eval.inference import append_jsonl, read_records  # noqa: E402
from steer_eval.prompts import load_prompts  # noqa: E402
from steer_eval.scoring import scorer_spec, verify  # noqa: E402

CHUNK = 1024  # generations between writes: an interrupt loses at most one chunk


def target_path(out_dir: Path, behaviors: tuple, split: str) -> Path:
    if len(behaviors) == 1:
        return out_dir / get_behavior(behaviors[0]).category / f"{behaviors[0]}_{split}.json"
    return out_dir / AND_TOKEN.strip("<>") / f"{'+'.join(behaviors)}_{split}.json"


def pair_targets(behaviors, pairs) -> list[tuple]:
    """`seen`: every compatible cross-category pair of the seen behaviours given; else explicit `a+b` pairs."""
    if pairs == ["seen"]:
        seen = [get_behavior(b) for b in behaviors if not get_behavior(b).unseen]
        return [tuple(b.id for b in combo) for combo in compatible_combinations(2, seen)]
    targets = []
    for pair in pairs:
        ids = tuple(pair.split("+"))
        if len(ids) != 2:
            raise BehaviorError(f"--pairs takes 'seen' or pairs written a+b, not {pair!r}")
        resolve(ids)
        targets.append(ids)
    return targets


def read_done(path: Path) -> dict[str, dict]:
    return {record["id"]: record for record in read_records(path)}


def make_backend(args):
    if args.backend == "vllm":
        from steer_eval.backends.vllm import VLLMBackend
        return VLLMBackend(args.model)
    from steer_eval.backends.hf import HFBackend
    return HFBackend(args.model, batch_size=args.batch_size, dtype=args.dtype)


def build(args) -> list[Path]:
    from tqdm.auto import tqdm

    from steer_eval.backends.base import GenerationConfig

    if args.split == "test" and args.prompts == "bundled":
        raise BehaviorError("the bundled test split is held out for evaluation; build data from train or val")
    prompts = load_prompts(args.prompts, args.split)[:args.limit]
    targets = [(b,) for b in args.behaviors] + (pair_targets(args.behaviors, args.pairs) if args.pairs else [])
    for target in targets:
        resolve(target)
    out_dir = Path(args.out_dir)
    backend = make_backend(args)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    teacher = {"backend": backend.name, "model": args.model, "generation": config.as_dict()}

    done = {t: read_done(target_path(out_dir, t, args.split).with_suffix(".all.jsonl")) for t in targets}
    todo = []  # (target, record id, prompt, behaviours in order, paraphrase seed)
    for target in targets:
        for prompt in prompts:
            for sample in range(args.samples):
                record_id = f"{prompt.id}#{sample}"
                if record_id in done[target]:
                    continue
                # Pairs appear in both orders, chosen per record, so <and> sees each behaviour on either side.
                rng = random.Random(f"{args.seed}:{record_id}:{'+'.join(target)}")
                order = tuple(rng.sample(target, len(target)))
                todo.append((target, record_id, prompt, order, args.seed * 1000 + sample))
    print(f"{len(targets)} targets x {len(prompts)} prompts x {args.samples} samples: "
          f"{len(todo)} to generate", file=sys.stderr)
    with tqdm(total=len(todo), desc="teacher responses", unit="response") as bar:
        for chunk_index, start in enumerate(range(0, len(todo), CHUNK)):
            chunk = todo[start:start + CHUNK]
            assembled = [backend.assemble(prompt.prompt, order, control_method="text", paraphrase_seed=seed)
                         for _, _, prompt, order, seed in chunk]
            chunk_config = GenerationConfig(**{**config.as_dict(), "seed": args.seed + chunk_index})
            responses = backend.generate(assembled, chunk_config, progress=False)
            by_target: dict[tuple, list] = {}
            for (target, record_id, prompt, order, seed), prompt_input, response in zip(chunk, assembled, responses):
                verdict = verify(order, response)
                record = {"id": record_id, "prompt": prompt.prompt, "response": response, "behaviors": list(order),
                          "instruction": prompt_input.instruction, "paraphrase_seed": seed, **verdict.as_dict()}
                by_target.setdefault(target, []).append(record)
                done[target][record_id] = record
            for target, records in by_target.items():
                progress_path = target_path(out_dir, target, args.split).with_suffix(".all.jsonl")
                progress_path.parent.mkdir(parents=True, exist_ok=True)
                append_jsonl(progress_path, records)
            bar.update(len(chunk))

    written = []
    for target in targets:
        path = target_path(out_dir, target, args.split)
        records = sorted(done[target].values(), key=lambda r: r["id"])
        kept = [r for r in records if r["followed"] or not args.filter]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(kept, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        meta = {"records": len(kept), "generated": len(records), "followed": sum(r["followed"] for r in records),
                "filter": args.filter, "prompts": args.prompts, "split": args.split, "teacher": teacher,
                "scorer": scorer_spec(target), "command": " ".join(sys.argv)}
        path.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2))
        print(f"{path}: {len(kept)} records ({meta['followed']}/{len(records)} followed)", file=sys.stderr)
        written.append(path)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviors", nargs="+", required=True, metavar="B")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="P",
                        help="'seen' (cross-category pairs of the seen --behaviors) or explicit pairs a+b")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--dtype", default="auto", help="HF backend weights: auto|float32|bfloat16")
    parser.add_argument("--prompts", default="bundled", help="'bundled' or a JSON/JSONL prompt file")
    parser.add_argument("--split", default="train", help="bundled split (train|val); the test split is refused")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--samples", type=int, default=1, help="responses per prompt, each with its own paraphrase")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--filter", action="store_true", help="keep only responses that pass the verifier")
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from steer_eval.cli import USER_ERRORS

    try:
        build(parse_args(argv))
    except USER_ERRORS as error:
        print(f"build_data.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
