#!/usr/bin/env bash
# The whole token pipeline for the default model, as run on a lent GPU: measure text accuracy on
# the test split, pick the behaviours to ship, build teacher data, train behaviour tokens, build pair data, train
# <and>, evaluate. Every stage is resumable (done-markers, resumable builders, trainer checkpoints), so the same
# command is simply run again after a call's time limit. Needs: MODEL (a model folder), W (work folder),
# PYTHONPATH with steer_eval, py3langid and gguf. Everything it makes lies under $W.
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="python3 -u"
SAMPLES="${SAMPLES:-2}"            # teacher responses per train prompt (each with its own paraphrase)
TEMPERATURE="${TEMPERATURE:-0.7}"  # teacher sampling for the train data
LR="${LR:-3e-3}"                   # the paper's 1e-4 assumes 50k examples per behaviour; we have ~1k
EPOCHS="${EPOCHS:-3}"
AND_LR="${AND_LR:-$LR}"
AND_EPOCHS="${AND_EPOCHS:-$EPOCHS}"
PAIR_SAMPLES="${PAIR_SAMPLES:-1}"  # teacher responses per train prompt and pair
TAG="${TAG:-}"                     # a second training round keeps its tokens, runs and evaluations apart
DATA_TAG="${DATA_TAG:-}"           # another teacher-data size keeps its data apart (issue 28: _4k, _16k)
DATA="$W/data$DATA_TAG"
BATCH="${BATCH:-32}"
GEN_BATCH="${GEN_BATCH:-512}"
FILTER="${FILTER---filter}"      # keep only verifier-passing teacher responses (empty: keep all)
N_PAIR="${N_PAIR:-64}"             # test prompts per (pair, order, condition)
N_SINGLE="${N_SINGLE:-244}"        # test prompts per single condition (244 = the whole test split)
LIMIT="${LIMIT:-400}"              # train prompts (400 = the whole train split); small values for a dry run
MAX_NEW="${MAX_NEW:-256}"          # new tokens per generation, as in the paper
# Pair conditions of the test evaluation (default: all, CAA and PrOSV included, which need gpu_baselines.sh's
# vectors in $TOKENS); another data size evaluates its tokens only and reuses the first round's text records.
PAIR_CONDITIONS="${PAIR_CONDITIONS:-}"
REQUIRED="german spanish french italian words_10_50"
ALL="german spanish french italian portuguese words_10_50 words_50_70 words_70_90 words_90_120 lowercase uppercase title_case sentences_1 sentences_2 sentences_3 sentences_4 sentences_5 json"
TOKENS="$W/tokens$TAG"
RUNS="$W/runs$TAG"
mkdir -p "$W"
source "$HERE/gpu_stages.sh"

if stage text_all; then  # text-instruction accuracy of every behaviour on the whole test split
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --singles $ALL --single_methods text \
      --n_single "$N_SINGLE" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --out_dir "$W/eval/text_records"
  $PY "$HERE/evaluate_tokens.py" summarize --records "$W/eval/text_records" --out "$W/eval/text_all" >/dev/null
  mark text_all
fi

if stage select; then  # ship the required behaviours plus every one whose text accuracy is at least 40%
  $PY - "$W/eval/text_all/table.json" "$REQUIRED" > "$W/shipped.txt" <<'EOF'
import json, sys
table = json.load(open(sys.argv[1]))["singles"]
required = sys.argv[2].split()
print(" ".join(b for b in table if b in required or table[b]["text"]["accuracy"] >= 0.4))
EOF
  mark select
fi
SHIPPED="$(cat "$W/shipped.txt")"
SEEN="$($PY -c "import sys; from steer_eval.scoring.behaviors import get_behavior as g; print(' '.join(b for b in sys.argv[1:] if not g(b).unseen))" $SHIPPED)"
echo "shipped: $SHIPPED | seen: $SEEN"

if stage data_singles$DATA_TAG; then
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SHIPPED --samples "$SAMPLES" --temperature "$TEMPERATURE" \
      $FILTER --limit "$LIMIT" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$DATA"
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SHIPPED --split val $FILTER \
      --limit "$LIMIT" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$DATA"
  mark data_singles$DATA_TAG
fi

train() {  # train STAGE RUN_DIR ARGS...: start, or resume from the run's checkpoint
  local stage_name="$1" run="$2"; shift 2
  if [ -f "$run/ckpt.pt" ]; then $PY "$HERE/train.py" --out_dir "$run" --resume
  else $PY "$HERE/train.py" --stage "$stage_name" --model "$MODEL" --tokens_dir "$TOKENS" --out_dir "$run" "$@"; fi
}

if stage train_behaviour$TAG; then
  singles_train=(); singles_val=()
  for b in $SHIPPED; do
    singles_train+=("$(ls "$DATA"/*/"${b}_train.json")"); singles_val+=("$(ls "$DATA"/*/"${b}_val.json")")
  done
  train behaviour "$RUNS/behaviour" --data "${singles_train[@]}" --lr "$LR" --epochs "$EPOCHS" \
      --batch_size "$BATCH" --run_validation --val_data_path "${singles_val[@]}" --eval_every 100 --log_every 10
  mark train_behaviour$TAG
fi

if stage data_pairs_s$PAIR_SAMPLES$DATA_TAG; then
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SEEN --pairs seen --samples "$PAIR_SAMPLES" --temperature "$TEMPERATURE" \
      $FILTER --limit "$LIMIT" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$DATA"
  mark data_pairs_s$PAIR_SAMPLES$DATA_TAG
fi

if stage train_and$TAG; then
  train and "$RUNS/and" --data "$DATA"/and/*_train.json --lr "$AND_LR" --epochs "$AND_EPOCHS" --batch_size "$BATCH" \
      --log_every 10
  mark train_and$TAG
fi

PAIRS="${PAIRS:-$($PY - $SHIPPED <<'EOF'
import sys
from steer_eval.scoring.behaviors import compatible_combinations, get_behavior
shipped = [get_behavior(b) for b in sys.argv[1:]]
print(" ".join("+".join(b.id for b in combo) for combo in compatible_combinations(2, shipped)))
EOF
)}"
echo "pairs: $PAIRS"

if stage val_eval$TAG; then  # on the val split: what a choice between training rounds may look at
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$TOKENS" --split val --singles $SHIPPED \
      --single_methods steering --pairs $PAIRS --pair_conditions steering/composition steering/concatenation \
      --n_single 100 --n_pair "$N_PAIR" --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" \
      --out_dir "$W/eval$TAG/val_records"
  $PY "$HERE/evaluate_tokens.py" summarize --records "$W/eval$TAG/val_records" --out "$W/eval$TAG/val" >/dev/null
  mark val_eval$TAG
fi

if [ -n "${COMPARE_WITH+set}" ] && [ "${TEST_EVAL:-1}" = 1 ] && [ ! -f "$W/done.evaluate$TAG" ]; then
  # A second round reaches the test split only if it beats the first on the val split.
  if ! $PY - "$W/eval$COMPARE_WITH/val/table.json" "$W/eval$TAG/val/table.json" <<'EOF'; then TEST_EVAL=0; fi
import json, sys
def score(path):
    table = json.load(open(path))
    singles = [row["steering"]["accuracy"] for row in table["singles"].values()]
    pairs = [c["conditions"]["steering/composition"]["mean"] for c in table["pairs"].values()]
    return (sum(singles) / len(singles) + sum(pairs) / len(pairs)) / 2
old, new = score(sys.argv[1]), score(sys.argv[2])
print(f"val score: previous round {old:.4f}, this round {new:.4f}")
sys.exit(0 if new > old else 1)
EOF
fi

if [ "${TEST_EVAL:-1}" = 1 ] && stage evaluate$TAG; then  # the held-out test split: the reported numbers
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$TOKENS" --singles $SHIPPED \
      --single_methods steering hybrid --pairs $PAIRS --n_single "$N_SINGLE" --n_pair "$N_PAIR" \
      ${PAIR_CONDITIONS:+--pair_conditions $PAIR_CONDITIONS} \
      --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --out_dir "$W/eval$TAG/records"
  text_records=(); [ -d "$W/eval/text_records" ] && text_records=("$W/eval/text_records")
  $PY "$HERE/evaluate_tokens.py" summarize --records "${text_records[@]}" "$W/eval$TAG/records" --out "$W/eval$TAG/final"
  mark evaluate$TAG
fi
