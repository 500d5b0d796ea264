#!/usr/bin/env bash
# Round 3 ("missing"): behaviour tokens for the 11 behaviours that the default model did not ship, so that every
# behaviour of the registry has one (lm-eval's compose_2/compose_3 need all 18). Runs trainers/gpu_pipeline.sh with
# the round-2 recipe (lr 5e-3, 5 epochs, 2 samples per train prompt at T 0.7, batch 32, 256 new tokens) for these
# behaviours only, and stops it after the behaviour tokens: no text_all/select (the behaviours are given), no pair
# data, no <and> (the shipped one is kept and must compose the new tokens zero-shot), no pair evaluation. Then the
# test split, singles only: text vs steering vs hybrid on all 244 prompts (HF backend, fp32, greedy).
#
# Unlike rounds 1-2 the teacher data is NOT verifier-filtered: for most of these behaviours the model follows its
# own text instruction 0-37% of the time, so filtered data would be empty (lowercase 0%) or tiny.
#
# Run on the GPU machine through gpu_call.sh (same environment: W, MODEL, PYTHONPATH):
#   BUDGET=500 RUN='bash $(dirname $P)/gpu_missing.sh' bash .gpu/code/trainers/gpu_call.sh
# Every stage is resumable; the same command continues after a call's time limit.
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
MISSING="${MISSING:-words_50_70 words_70_90 words_90_120 lowercase uppercase title_case sentences_2 sentences_3 sentences_4 sentences_5 json}"
export TAG="${TAG:-_r3}" LR="${LR:-5e-3}" EPOCHS="${EPOCHS:-5}" SAMPLES="${SAMPLES:-2}" TEMPERATURE="${TEMPERATURE:-0.7}"
export BATCH="${BATCH:-32}" MAX_NEW="${MAX_NEW:-256}" N_SINGLE="${N_SINGLE:-244}" GEN_BATCH="${GEN_BATCH:-512}"
export FILTER="" TEST_EVAL=0  # keep every teacher response; the pipeline's own test stage would evaluate pairs
mkdir -p "$W"
echo "$MISSING" > "$W/shipped.txt"
# The pipeline's stages that must not run here are marked done; it then builds data and trains, nothing else.
for skip in text_all select data_pairs_s1 "train_and$TAG" "val_eval$TAG"; do touch "$W/done.$skip"; done
bash "$HERE/gpu_pipeline.sh"
[ -f "$W/done.train_behaviour$TAG" ] || { echo "behaviour tokens not finished"; exit 1; }

if [ ! -f "$W/done.evaluate_singles$TAG" ]; then
  echo "== evaluate_singles$TAG ($(date +%T))"
  python3 -u "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$W/tokens$TAG" --singles $MISSING \
      --single_methods text steering hybrid --n_single "$N_SINGLE" --max_new_tokens "$MAX_NEW" \
      --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$W/eval$TAG/records"
  python3 -u "$HERE/evaluate_tokens.py" summarize --records "$W/eval$TAG/records" --out "$W/eval$TAG/final"
  touch "$W/done.evaluate_singles$TAG"
fi
