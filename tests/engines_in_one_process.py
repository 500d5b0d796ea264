"""Several small vLLM engines, one after another, in one fresh process with the engine core in it.

On CPU every engine otherwise spawns two processes (engine core, worker) that each import vLLM (~10 s apiece);
with VLLM_ENABLE_V1_MULTIPROCESSING=0 and the "uni" executor both stay in this process. Only engines run here:
vLLM's Transformers fallback patches Hugging Face model classes (seen: OLMo 2), so the HF side of a comparison
runs in the test process. The spawned layout the product uses is covered by the session engines of conftest.py.

`python tests/engines_in_one_process.py jobs.json results.json`; `generate_in_one_process(jobs)` runs that.
A job: {"model", "tokens_dir", "engine": VLLMBackend keywords, "prompts": [[prompt, behaviours, control_method]],
"max_new_tokens"}. Its result: {"scale", "input_ids": [...], "outputs": [...]}."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def generate_in_one_process(jobs: list[dict], timeout: float = 900) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        jobs_file, results_file = Path(folder) / "jobs.json", Path(folder) / "results.json"
        jobs_file.write_text(json.dumps(jobs))
        result = subprocess.run([sys.executable, __file__, str(jobs_file), str(results_file)], capture_output=True,
                                text=True, timeout=timeout, env={**os.environ, **IN_PROCESS})
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(results_file.read_text())


def assert_same_as_hf(engine_result: dict, hf, requests: list, max_new_tokens: int) -> None:
    """The engine's embedding scale, assembled token ids and greedy texts equal the HF backend's for `requests`."""
    from steer_eval.backends.generation import GenerationConfig
    prompts = [hf.assemble(prompt, behaviors, control_method=method) for prompt, behaviors, method in requests]
    assert engine_result["scale"] == hf.embeddings.scale
    assert engine_result["input_ids"] == [list(prompt.input_ids) for prompt in prompts]
    assert engine_result["outputs"] == hf.generate(prompts, GenerationConfig(max_new_tokens=max_new_tokens),
                                                   progress=False)


def _run(job: dict) -> dict:
    from steer_eval.backends.generation import GenerationConfig
    from steer_eval.backends.vllm import VLLMBackend
    engine = VLLMBackend(job["model"], tokens_dir=job["tokens_dir"], distributed_executor_backend="uni",
                         **job["engine"])
    try:
        prompts = [engine.assemble(prompt, behaviors, control_method=method)
                   for prompt, behaviors, method in job["prompts"]]
        outputs = engine.generate(prompts, GenerationConfig(max_new_tokens=job["max_new_tokens"]), progress=False)
        return {"scale": engine.embeddings.scale, "input_ids": [list(p.input_ids) for p in prompts],
                "outputs": outputs}
    finally:
        engine.shutdown()


if __name__ == "__main__":
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0", "run through generate_in_one_process"
    jobs_path, results_path = sys.argv[1:]
    results = [_run(job) for job in json.loads(Path(jobs_path).read_text())]
    Path(results_path).write_text(json.dumps(results))
