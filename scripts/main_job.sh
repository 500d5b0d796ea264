#!/usr/bin/env bash
# Set up .venv (if needed), fetch the default model, and run the main job on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/steer-eval models fetch smollm2-135m
out=runs/main_job
mkdir -p "$out"
for steering in "german" "german words_10_50"; do
  name=${steering// /+}
  .venv/bin/steer-eval infer --model_path smollm2-135m --steering $steering --control-method text \
    --limit 32 --max-new-tokens 128 --silent --output "$out/text_${name}.jsonl" | tee "$out/text_${name}.summary.json"
done
