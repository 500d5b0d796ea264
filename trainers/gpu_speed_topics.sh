#!/usr/bin/env bash
# Training speed and topic generalisation on a lent GPU (run through trainers/gpu_call.sh with
# RUN='bash .gpu/code/trainers/gpu_speed_topics.sh'). Stages, each resumable by its done-marker:
#   bench_b32, bench_b8  benchmarks/bench_train.py: the plain reference step against the trainer's step
#   topics_shipped       the shipped tokens and their text instructions on the new_topics split (20 topics never
#                        trained on)
#   data_more            teacher data for the shipped behaviours on the train prompts the first training did not
#                        use (bundled train split after the first 400: 60 further topics)
#   train_more           behaviour tokens retrained on the old data plus that data
#   topics_more          the retrained tokens on new_topics, the test split and the val split
# Needs MODEL, W and PYTHONPATH as gpu_call.sh sets them, the first training's data under $W/data (carried as
# .gpu/state/data.tgz) and the shipped tokens in .gpu/code (trainers/gpu_carry.sh puts them there).
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
CODE="$(dirname "$HERE")"
PY="python3 -u"
SHIPPED="german spanish french italian portuguese words_10_50 sentences_1"
ALL_TOKENS="$SHIPPED words_50_70 words_70_90 words_90_120 lowercase uppercase title_case sentences_2 sentences_3 sentences_4 sentences_5 json"
GEN_BATCH="${GEN_BATCH:-512}"
SHIPPED_TOKENS="$CODE/steer_eval/steering/shipped/SmolLM2-135M-Instruct/steering_tokens"
source "$HERE/gpu_stages.sh"
mkdir -p "$W/bench"

if stage bench_b32; then
  $PY "$CODE/benchmarks/bench_train.py" --model "$MODEL" --data "$W/data/language/german_train.json" --batch_size 32 \
      --steps 10 --group_sizes 0 8 16 --label h200_b32 --out "$W/bench"
  mark bench_b32
fi
if stage bench_b8; then
  $PY "$CODE/benchmarks/bench_train.py" --model "$MODEL" --data "$W/data/language/german_train.json" --batch_size 8 \
      --steps 10 --group_sizes 0 4 --label h200_b8 --out "$W/bench"
  mark bench_b8
fi

if stage topics_shipped; then
  $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$SHIPPED_TOKENS" --split new_topics \
      --singles $ALL_TOKENS --single_methods text steering --batch_size "$GEN_BATCH" --out_dir "$W/eval_topics/records"
  $PY "$HERE/evaluate_tokens.py" summarize --records "$W/eval_topics/records" --split new_topics \
      --out "$W/eval_topics/table" > /dev/null
  mark topics_shipped
fi

if stage data_more; then
  $PY - "$W/more_prompts.jsonl" <<'EOF'
import json, sys
from steer_eval.scoring.prompts import bundled_prompts
with open(sys.argv[1], "w") as out:
    for p in bundled_prompts("train")[400:]:
        out.write(json.dumps({"id": p.id, "prompt": p.prompt}) + "\n")
EOF
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors $SHIPPED --prompts "$W/more_prompts.jsonl" --samples 1 \
      --temperature 0.7 --filter --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$W/data_more"
  mark data_more
fi

if stage train_more; then
  files=()
  for b in $SHIPPED; do files+=("$(ls "$W"/data/*/"${b}_train.json")" "$(ls "$W"/data_more/*/"${b}_train.json")"); done
  run="$W/runs_more/behaviour"
  if [ -f "$run/ckpt.pt" ]; then $PY "$HERE/train.py" --out_dir "$run" --resume
  else $PY "$HERE/train.py" --stage behaviour --model "$MODEL" --tokens_dir "$W/tokens_more" --out_dir "$run" \
      --data "${files[@]}" --lr 3e-3 --epochs 3 --batch_size 32 --log_every 10; fi
  mark train_more
fi

if stage topics_more; then
  for split in val new_topics test; do  # val (100 prompts, as the pipeline's) decides; the others report
    $PY "$HERE/evaluate_tokens.py" generate --model "$MODEL" --tokens_dir "$W/tokens_more" --split "$split" \
        --singles $SHIPPED --single_methods steering --n_single "$([ $split = val ] && echo 100 || echo 244)" \
        --batch_size "$GEN_BATCH" --out_dir "$W/eval_more/$split/records"
  done
  mark topics_more
fi
