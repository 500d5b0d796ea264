"""Batch inference over a prompt file: one JSONL record per prompt (resumable), accuracy per behaviour."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from steer_eval.backends.base import GenerationConfig, SteeringBackend
from steer_eval.prompts import load_prompts
from steer_eval.scoring import scorer_spec, verify

CHUNK = 32  # records reach disk every CHUNK prompts, so an interrupt loses at most one chunk


def _done_ids(output: Path | None) -> dict[str, dict]:
    if output is None or not output.is_file():
        return {}
    records = {}
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash; that prompt runs again
        records[record["id"]] = record
    return records


def summarize(records: Sequence[dict], behaviors: Sequence[str]) -> dict:
    n = len(records)
    if n == 0:
        return {"n": 0}
    return {"n": n, "accuracy": sum(r["followed"] for r in records) / n,
            "per_behavior": {b: sum(r["per_behavior"][b] for r in records) / n for b in behaviors}}


def run_inference(backend: SteeringBackend, data_path: str, behaviors: Sequence[str], *, control_method: str,
                  mode: str, config: GenerationConfig, limit: int | None = None, output: str | None = None,
                  silent: bool = False) -> dict:
    prompts = load_prompts(data_path)[:limit]
    output_path = Path(output) if output else None
    done = _done_ids(output_path)
    todo = [p for p in prompts if p.id not in done]
    if done and not silent:
        print(f"resuming: {len(prompts) - len(todo)} of {len(prompts)} prompts already in {output}", file=sys.stderr)
    spec = scorer_spec(behaviors)
    records = [done[p.id] for p in prompts if p.id in done]
    if output_path:
        output_path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc="infer", unit="prompt", disable=silent) as bar:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            assembled = [backend.assemble(p.prompt, behaviors, control_method=control_method, mode=mode,
                                          paraphrase_seed=config.seed) for p in chunk]
            responses = backend.generate(assembled, config, progress=False)
            new = []
            for prompt, prompt_input, response in zip(chunk, assembled, responses):
                verdict = verify(behaviors, response)
                new.append({"id": prompt.id, "prompt": prompt.prompt, **prompt_input.describe(),
                            "backend": backend.name, "model": backend.model_spec, "response": response,
                            **verdict.as_dict(), "scorer": spec, "generation": config.as_dict()})
                if not silent:
                    tqdm.write(f"[{'ok' if verdict.followed else 'x '}] {prompt.prompt[:60]!r} -> {response[:80]!r}")
            if output_path:
                with output_path.open("a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
            records.extend(new)
            bar.update(len(chunk))
    return {"behaviors": list(behaviors), "control_method": control_method, "mode": mode,
            "backend": backend.name, "model": backend.model_spec, **summarize(records, behaviors)}
