"""Teacher data for the trainer: the frozen model's responses to prompts carrying a behaviour's instruction.

For every target (one behaviour, or a pair for `<and>`) and every prompt, `samples` responses are generated
with text control, each with its own paraphrase seed and sampling seed. Generation goes through the one runner
into `<out_dir>/records_<split>.jsonl` (with its manifest, resumable); the training files
`<out_dir>/<category>/<behaviour>_<split>.json` (pairs: `<out_dir>/and/<b1>+<b2>_<split>.json`) are then
exported from those records, optionally keeping only responses that follow the instruction.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Sequence

from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.scoring.behaviors import AND_TOKEN, BehaviorError, compatible_combinations, get_behavior, resolve
from steer_eval.backends.generation import GenerationConfig
from steer_eval.scoring.prompts import Prompt, load_prompts
from steer_eval.runs.records import Record, Request
from steer_eval.runs.runner import run
from steer_eval.scoring.verdict import scorer_spec

logger = logging.getLogger(__name__)

Target = tuple[str, ...]


def target_path(out_dir: Path, target: Target, split: str) -> Path:
    if len(target) == 1:
        return out_dir / get_behavior(target[0]).category / f"{target[0]}_{split}.json"
    return out_dir / AND_TOKEN.strip("<>") / f"{'+'.join(target)}_{split}.json"


def pair_targets(behaviors: Sequence[str], pairs: Sequence[str]) -> list[Target]:
    """`seen`: every compatible cross-category pair of the seen behaviours given; else explicit `a+b` pairs."""
    if list(pairs) == ["seen"]:
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


def teacher_requests(targets: Sequence[Target], prompts: Sequence[Prompt], samples: int, seed: int) -> list[Request]:
    requests = []
    for target in targets:
        resolve(target)
        for prompt in prompts:
            for sample in range(samples):
                # Pairs appear in both orders, chosen per record, so <and> sees each behaviour on either side.
                rng = random.Random(f"{seed}:{prompt.id}#{sample}:{'+'.join(target)}")
                order = tuple(rng.sample(target, len(target)))
                requests.append(Request(prompt.id, prompt.prompt, order, "text", "composition", sample=sample,
                                        paraphrase_seed=seed * 1000 + sample))
    return requests


def export(records: Sequence[Record], target: Target, path: Path, *, keep_failed: bool, meta: dict) -> int:
    """Write one target's training file (a JSON list of records) and its .meta.json; return the records kept."""
    mine = [r for r in records if sorted(r.behaviors) == sorted(target)]
    kept = [r.to_json() for r in mine if keep_failed or r.followed]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(kept, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    summary = {"records": len(kept), "generated": len(mine), "followed": sum(r.followed for r in mine),
               "filter": not keep_failed, "scorer": scorer_spec(target), **meta}
    path.with_suffix(".meta.json").write_text(json.dumps(summary, indent=2))
    logger.info("%s: %d records (%d/%d followed)", path, len(kept), summary["followed"], len(mine))
    return len(kept)


def build(behaviors: Sequence[str], *, pairs: Sequence[str] | None = None, spec: BackendSpec,
          config: GenerationConfig, prompts: str = "bundled", split: str = "train", limit: int | None = None,
          samples: int = 1, keep_failed: bool = True, out_dir: str | Path = "data", restart: bool = False,
          progress: bool = True) -> list[Path]:
    if split in ("test", "new_topics") and prompts == "bundled":
        raise BehaviorError(f"the bundled {split} split is held out for evaluation; build data from train or val")
    if samples < 1:
        raise BehaviorError(f"--samples must be at least 1, got {samples}")
    chosen = load_prompts(prompts, split)[:limit]
    targets = [(b,) for b in behaviors] + (pair_targets(behaviors, pairs) if pairs else [])
    requests = teacher_requests(targets, chosen, samples, config.seed)
    out_dir = Path(out_dir)
    records = run(requests, spec, config, out_dir / f"records_{split}.jsonl", progress=progress, restart=restart,
                  chunk_size=1024).records()
    meta = {"prompts": prompts, "split": split, "teacher": {"backend": spec.backend, "model": spec.model,
                                                            "generation": config.as_dict()},
            "command": " ".join(sys.argv)}
    written = []
    for target in targets:
        path = target_path(out_dir, target, split)
        export(records, target, path, keep_failed=keep_failed, meta=meta)
        written.append(path)
    return written
