#!/usr/bin/env bash
# Issue 28 on a lent GPU, through trainers/gpu_call.sh (RUN='bash $(dirname $P)/gpu_and_ablations.sh'), continuing
# from the 4k round's state (data_4k, shipped.txt, eval_4k). Resumable stages like gpu_pipeline.sh's.
#   1. round 2 (the shipped tokens) on the val split: gpu_pipeline.sh's own val_eval stage with TAG=_r2v, its
#      token store a copy of the shipped behaviour tokens and <and> (training stages marked done), so the two rounds
#      can be judged by one scorer.
#   2. the <and> ablations, everything else fixed: behaviour tokens = the shipped ones (frozen), pair data =
#      data_4k/and (1 sample per train prompt and seen pair), the pipeline's <and> settings (lr 3e-3, 3 epochs,
#      batch 32): ref (zero init, lambda_orth 0.5), orth0 (lambda_orth 0), rand (--and_init random). Each on the val
#      split (pairs, steering/composition) and the test split (the 11 pairs, both orders, 64 prompts; ref also
#      steering/concatenation, the "no <and>" row), then 3-behaviour composition by ref's <and> (trained on pairs
#      only) on the test split: every compatible triple of the shipped behaviours, all 6 orders, 32 prompts,
#      steering/composition vs text vs steering/concatenation.
#   RECIPE=shipped: the same three variants at the shipped <and> recipe (round 2: lr 1e-2, 6 epochs, 2 teacher
#      samples per train prompt and seen pair): pair data built again the way round 2 built it (gpu_pipeline.sh's
#      data_pairs stage with PAIR_SAMPLES=2: temperature 0.7, --filter, the 400 train prompts, seed 0) into
#      $W/data_r2p, resuming from the 4k round's records (they hold every single-behaviour sample 0-1 and the pairs'
#      sample 0 under the same request keys, so only the pairs' sample 1 is generated); stages and folders carry
#      the suffix _s (tokens_abl_s_ref, ...); per variant train and test, then each variant's val (no
#      concatenation: it does not depend on <and>; round 2's records have it), no triples. VARIANTS sets the order.
# Seconds per stage go to $W/bench/abl_times.tsv.
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="python3 -u"
SHIPPED_STORE="$HERE/../steer_eval/steering/shipped/SmolLM2-135M-Instruct/steering_tokens"
RECIPE="${RECIPE:-pipeline}"
case "$RECIPE" in
  pipeline) SFX=""; DATA="$W/data_4k"; AND_LR=3e-3; AND_EPOCHS=3 ;;
  shipped) SFX="_s"; DATA="$W/data_r2p"; AND_LR=1e-2; AND_EPOCHS=6 ;;
  *) echo "RECIPE is pipeline or shipped, not $RECIPE" >&2; exit 2 ;;
esac
GEN_BATCH="${GEN_BATCH:-512}"
N_PAIR="${N_PAIR:-64}"
N_TRIPLE="${N_TRIPLE:-32}"
MAX_NEW="${MAX_NEW:-256}"
mkdir -p "$W/bench"
source "$HERE/gpu_stages.sh"
timed() {  # timed NAME COMMAND...: run it and append its wall seconds to bench/abl_times.tsv
  local name="$1" start; shift; start=$EPOCHREALTIME
  "$@"
  awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' \
      >> "$W/bench/abl_times.tsv"
}
# The shipped behaviours (round 2's select stage; the 4k round's state carried its done-marker, not the file)
[ -f "$W/shipped.txt" ] || echo "german spanish french italian portuguese words_10_50 sentences_1" > "$W/shipped.txt"
SHIPPED="$(cat "$W/shipped.txt")"
combos() { $PY - "$1" $SHIPPED <<'EOF'
import sys
from steer_eval.scoring.behaviors import compatible_combinations, get_behavior
shipped = [get_behavior(b) for b in sys.argv[2:]]
print(" ".join("+".join(b.id for b in c) for c in compatible_combinations(int(sys.argv[1]), shipped)))
EOF
}
PAIRS="$(combos 2)"; TRIPLES="$(combos 3)"
echo "pairs: $PAIRS | triples: $TRIPLES"

store() {  # store DIR NAMES...: a token store holding copies of the shipped tokens NAMES
  local dir="$1"; shift; mkdir -p "$dir"
  for name in "$@"; do [ -d "$dir/$name" ] || cp -r "$SHIPPED_STORE/$name" "$dir/$name"; done
}

# 1. round 2 on val, by the pipeline's own stage and settings
if [ "$RECIPE" = pipeline ] && [ ! -f "$W/done.val_eval_r2v" ]; then
  store "$W/tokens_r2v" $SHIPPED and
  touch "$W/done.train_behaviour_r2v" "$W/done.train_and_r2v"
  timed val_eval_r2v env TAG=_r2v DATA_TAG=_4k TEST_EVAL=0 bash "$HERE/gpu_pipeline.sh"
fi

gen() {  # gen TOKENS OUT_DIR SPLIT ARGS...: evaluate_tokens.py generate with the pipeline's generation settings,
  # then a first table (<out_dir>/../<split>/; the reported tables are judged again on the CPU machine)
  local tokens="$1" out="$2" split="$3"; shift 3
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$tokens" --max_new_tokens "$MAX_NEW" \
      --batch_size "$GEN_BATCH" --split "$split" --out_dir "$out" "$@"
  $PY "$HERE/evaluate_tokens.py" summarize --records "$out" --out "$(dirname "$out")/$split" --split "$split" \
      >/dev/null
}
VARIANTS="${VARIANTS:-ref orth0 rand}"
declare -A FLAGS=([ref]="" [orth0]="--lambda_orth 0" [rand]="--and_init random")

# 2'. the shipped recipe's pair data: round 2's build (PAIR_SAMPLES=2), resumed from the 4k round's records
if [ "$RECIPE" = shipped ] && stage abl_data_r2p; then
  mkdir -p "$DATA"
  [ -f "$DATA/records_train.jsonl" ] || cp "$W/data_4k/records_train.jsonl" "$W/data_4k/records_train.manifest.json" \
      "$DATA/"
  SEEN="$($PY -c "import sys; from steer_eval.scoring.behaviors import get_behavior as g; print(' '.join(b for b in sys.argv[1:] if not g(b).unseen))" $SHIPPED)"
  timed abl_data_r2p $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SEEN --pairs seen --samples 2 \
      --temperature 0.7 --filter --limit 400 --max_new_tokens "$MAX_NEW" --batch_size "$GEN_BATCH" --dtype float32 \
      --out_dir "$DATA"
  mark abl_data_r2p
fi

for v in $VARIANTS; do
  n="$SFX"_$v  # stage and folder suffix: _ref (pipeline recipe), _s_ref (shipped recipe), ...
  # 2a. the <and> token
  if stage abl_train$n; then
    store "$W/tokens_abl$n" $SHIPPED
    run="$W/runs_abl$n/and"
    if [ -f "$run/ckpt.pt" ]; then timed abl_train$n $PY "$HERE/train.py" --out_dir "$run" --resume
    else timed abl_train$n $PY "$HERE/train.py" --stage and --model "$MODEL" --tokens_dir "$W/tokens_abl$n" \
        --out_dir "$run" --data "$DATA"/and/*_train.json --lr "$AND_LR" --epochs "$AND_EPOCHS" --batch_size 32 \
        --log_every 10 ${FLAGS[$v]}; fi
    mark abl_train$n
  fi
  # 2b. test split: the 11 pairs, both orders; the pipeline recipe's reference also without <and> (concatenation)
  if stage abl_test$n; then
    conditions=(steering/composition); [ "$n" = _ref ] && conditions+=(steering/concatenation)
    timed abl_test$n gen "$W/tokens_abl$n" "$W/eval_abl$n/records" test --pairs $PAIRS \
        --pair_conditions "${conditions[@]}" --n_pair "$N_PAIR"
    mark abl_test$n
  fi
done
# 2c. val split, after every variant's test (a call cut at its budget leaves whole test rows): pairs, <and>
# composition (concatenation: round 2's val records, the same behaviour tokens)
for v in $VARIANTS; do
  n="$SFX"_$v
  if stage abl_val$n; then
    timed abl_val$n gen "$W/tokens_abl$n" "$W/eval_abl$n/val_records" val --pairs $PAIRS \
        --pair_conditions steering/composition --n_pair "$N_PAIR"
    mark abl_val$n
  fi
done
# 2d. 3 behaviours composed by the reference <and> (trained on pairs only), test split, all 6 orders
if [ "$RECIPE" = pipeline ] && stage abl_triples; then
  timed abl_triples gen "$W/tokens_abl_ref" "$W/eval_abl_triples/records" test --pairs $TRIPLES \
      --pair_conditions steering/composition text/concatenation steering/concatenation --n_pair "$N_TRIPLE"
  mark abl_triples
fi
echo "ablations: all stages done"
