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


def parse_jsonl(text: str) -> list[dict]:
    """One record per line; a line cut short by a crash is skipped (that request runs again)."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_records(path: Path | None) -> list[dict]:
    """Records already written to a JSONL file (none if it doesn't exist)."""
    if path is None or not path.is_file():
        return []
    return parse_jsonl(path.read_text(encoding="utf-8"))


def summarize(records: Sequence[dict], behaviors: Sequence[str]) -> dict:
    n = len(records)
    if n == 0:
        return {"n": 0}
    return {"n": n, "accuracy": sum(r["followed"] for r in records) / n,
            "per_behavior": {b: sum(r["per_behavior"][b] for r in records) / n for b in behaviors}}


def evaluate(backend: SteeringBackend, requests: Sequence[tuple[str, str, Sequence[str], str, str]],
             config: GenerationConfig) -> list[dict]:
    """Assemble, generate and verify (prompt_id, prompt, behaviours, control_method, mode) requests; one record each."""
    assembled = [backend.assemble(prompt, behaviors, control_method=control_method, mode=mode,
                                  paraphrase_seed=config.seed)
                 for _, prompt, behaviors, control_method, mode in requests]
    responses = backend.generate(assembled, config, progress=False)
    records = []
    for (prompt_id, prompt, behaviors, _, _), prompt_input, response in zip(requests, assembled, responses):
        records.append({"id": prompt_id, "prompt": prompt, **prompt_input.describe(), "backend": backend.name,
                        "model": backend.model_spec, "response": response, **verify(behaviors, response).as_dict(),
                        "scorer": scorer_spec(behaviors), "generation": config.as_dict()})
    return records


def run_inference(backend: SteeringBackend, data_path: str, behaviors: Sequence[str], *, control_method: str,
                  mode: str, config: GenerationConfig, limit: int | None = None, output: str | None = None,
                  silent: bool = False) -> dict:
    prompts = load_prompts(data_path)[:limit]
    output_path = Path(output) if output else None
    done = {r["id"]: r for r in read_records(output_path)}
    todo = [p for p in prompts if p.id not in done]
    if done and not silent:
        print(f"resuming: {len(prompts) - len(todo)} of {len(prompts)} prompts already in {output}", file=sys.stderr)
    records = [done[p.id] for p in prompts if p.id in done]
    if output_path:
        output_path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc="infer", unit="prompt", disable=silent) as bar:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            new = evaluate(backend, [(p.id, p.prompt, behaviors, control_method, mode) for p in chunk], config)
            if not silent:
                for record in new:
                    tqdm.write(f"[{'ok' if record['followed'] else 'x '}] {record['prompt'][:60]!r} -> "
                               f"{record['response'][:80]!r}")
            if output_path:
                append_jsonl(output_path, new)
            records.extend(new)
            bar.update(len(chunk))
    return {"behaviors": list(behaviors), "control_method": control_method, "mode": mode,
            "backend": backend.name, "model": backend.model_spec, **summarize(records, behaviors)}


def append_jsonl(path: Path, records: Sequence[dict]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        handle.flush()
