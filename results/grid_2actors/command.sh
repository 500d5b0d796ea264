#!/usr/bin/env bash
# The committed real grid: the default model, every order of k = 1-2 combinations of the shipped tokens'
# behaviours, steering / text / hybrid, 50 held-out test prompts, on 2 Ray actors (one vLLM engine each).
set -euo pipefail
cd "$(dirname "$0")/../.."
singles=(german spanish french italian portuguese sentences_1 words_10_50)
pairs=(german+sentences_1 german+words_10_50 spanish+sentences_1 spanish+words_10_50 french+sentences_1
       french+words_10_50 italian+sentences_1 italian+words_10_50 portuguese+sentences_1 portuguese+words_10_50
       sentences_1+words_10_50)
combos=()
for c in "${singles[@]}" "${pairs[@]}"; do combos+=(--combination "$c"); done
.venv/bin/steer-eval grid --backend vllm --model smollm2-135m --k 1 2 "${combos[@]}" \
  --control-method steering text hybrid --mode composition --num-prompts 50 --actors 2 --dtype float32 \
  --output-dir results/grid_2actors "$@"   # e.g. --dry-run
if [ -f results/grid_2actors/records.jsonl ]; then
  .venv/bin/steer-eval analyze results/grid_2actors --plot results/grid_2actors/accuracy_by_k.png > results/grid_2actors/table.md
fi
