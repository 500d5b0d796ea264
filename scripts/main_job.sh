#!/usr/bin/env bash
# Set up .venv (if needed), fetch the default model, and run the main job on it:
# the shipped steering tokens against the text instruction (german; german <and> words_10_50 in both orders)
# on held-out test prompts through the vLLM backend and its results page (report.html), then lm-eval's compose_2
# and compose_3 tasks with steering_vllm exactly as users type it (defaults: the default model and its shipped tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/steer-eval models fetch smollm2-135m
out=runs/main_job
mkdir -p "$out"
.venv/bin/steer-eval grid --backend vllm --model smollm2-135m --control-method steering text \
  --k 1 2 --combination german --combination german+words_10_50 --num-prompts 32 --max-new-tokens 128 \
  --output-dir "$out/grid"
.venv/bin/steer-eval analyze "$out/grid" --plot "$out/grid/summary.png" > "$out/grid/summary.md"
cat "$out/grid/summary.md"
.venv/bin/steer-eval report "$out/grid" --html "$out/report.html"  # the results page; prints its path
.venv/bin/lm_eval --model steering_vllm --tasks compose_2,compose_3 --limit 6 \
  --output_path "$out/lm_eval" --log_samples   # 6: one prompt's complete order set per k=3 subtask
echo "main job done: records, summary.md/summary.png, report.html (open it in a browser) and lm-eval results under $out/"
