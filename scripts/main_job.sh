#!/usr/bin/env bash
# Set up .venv (if needed), fetch the default model, and run the main job on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/steer-eval models fetch smollm2-135m
out=runs/main_job
mkdir -p "$out"
# The shipped steering tokens (models/SmolLM2-135M-Instruct/steering_tokens) against the text instruction.
for steering in "german" "german <and> words_10_50"; do
  name=$(echo "$steering" | tr -d '<>' | tr ' ' '+')
  for method in text steering; do
    .venv/bin/steer-eval infer --model_path smollm2-135m --steering $steering --control-method $method \
      --limit 32 --max-new-tokens 128 --silent --output "$out/${method}_${name}.jsonl" \
      | tee "$out/${method}_${name}.summary.json"
  done
done
