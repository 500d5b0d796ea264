#!/usr/bin/env bash
# The CAA and PrOSV baselines for the default model, as run on a lent GPU (results/baselines/README.md): teacher
# data for the shipped behaviours, CAA vectors + layer x multiplier sweep on the val split, PrOSV training on the
# teacher data at the layer the sweep chose, then the test-split evaluation of caa, prosv and hybrid pairs on the
# prompts of results/token_eval (244 per single behaviour, the first 64 per pair and order). Every stage is
# resumable (done-markers, resumable records), so the same command is run again after a call's time limit.
# Needs MODEL (model folder), W (work folder), PYTHONPATH with steer_eval, py3langid, regex and gguf.
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="python3 -u"
SHIPPED="german spanish french italian portuguese words_10_50 sentences_1"  # results/token_eval: the 7 shipped
LAYERS="${LAYERS:-3 6 9 12 15 20}"
MULTIPLIERS="${MULTIPLIERS:-1 2 4 8}"
GEN_BATCH="${GEN_BATCH:-512}"
LIMIT="${LIMIT:-400}" MAX_NEW="${MAX_NEW:-256}" SWEEP_PROMPTS="${SWEEP_PROMPTS:-24}" EPOCHS="${EPOCHS:-5}"
N_SINGLE="${N_SINGLE:-244}" N_PAIR="${N_PAIR:-64}"  # small values: a dry run on the CPU
CAA_PROMPTS="${CAA_PROMPTS:-400}"  # train prompts for the contrastive means
FILTER="${FILTER---filter}"      # keep only verifier-passing teacher responses (empty: keep all)
TOKENS="$W/baseline_tokens"
mkdir -p "$W" "$TOKENS"
source "$HERE/gpu_stages.sh"

if stage data_singles; then  # as gpu_pipeline.sh: 2 samples per train prompt at 0.7, verifier-filtered
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SHIPPED --samples 2 --temperature 0.7 $FILTER \
      --limit "$LIMIT" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$W/data"
  mark data_singles
fi

if stage caa; then
  $PY "$HERE/caa.py" --model "$MODEL" --behaviors $SHIPPED --tokens_dir "$TOKENS" --layers $LAYERS \
      --train_prompts "$CAA_PROMPTS" \
      --multipliers $MULTIPLIERS --sweep_prompts "$SWEEP_PROMPTS" --max_new_tokens "$MAX_NEW" \
      --batch_size "$GEN_BATCH" --report "$W/caa_sweep"
  mark caa
fi
LAYER="$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['chosen']['layer'])" \
    "$W/caa_sweep/sweep.json")"

if stage prosv; then  # the steering tokens' recipe (lr 5e-3, 5 epochs, batch 32, T = 10) at the CAA layer
  data=(); for b in $SHIPPED; do data+=("$(ls "$W"/data/*/"${b}_train.json")"); done
  $PY "$HERE/train_prosv.py" --model "$MODEL" --data "${data[@]}" --tokens_dir "$TOKENS" --layer "$LAYER" \
      --epochs "$EPOCHS" --lr 5e-3 --batch_size 32 --out_dir "$W/runs/prosv"
  mark prosv
fi

PAIRS="$($PY - $SHIPPED <<'EOF'
import sys
from steer_eval.scoring.behaviors import compatible_combinations, get_behavior
print(" ".join("+".join(b.id for b in c) for c in compatible_combinations(2, [get_behavior(b) for b in sys.argv[1:]])))
EOF
)"
if stage evaluate; then  # the shipped steering tokens sit next to the baselines' vectors for the hybrid pairs
  cp -rn "${SHIPPED_TOKENS:-$PWD/steer_eval/steering/shipped/SmolLM2-135M-Instruct/steering_tokens}/." "$TOKENS/"
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$TOKENS" --singles $SHIPPED \
      --single_methods caa prosv --pairs $PAIRS --pair_conditions caa/composition prosv/composition \
      hybrid/composition --n_single "$N_SINGLE" --n_pair "$N_PAIR" --max_new_tokens "$MAX_NEW" \
      --batch_size "$GEN_BATCH" --out_dir "$W/eval/baselines"
  mark evaluate
fi
