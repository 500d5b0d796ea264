#!/usr/bin/env bash
# Training speed with the decoder as CUDA graphs, on a lent GPU (run through trainers/gpu_call.sh with
# RUN='bash .gpu/code/trainers/gpu_train_speed.sh'). Stages, each resumable by its done-marker:
#   data_speed        teacher data for german and words_10_50 (the first 400 train prompts, 3 samples, filtered)
#   test_graphs       tests/test_decoder_graphs.py, whose CUDA tests capture graphs and replay them against the
#                     eager step
#   bench_b32, bench_b8   benchmarks/bench_train.py: the plain reference, the trainer's step in one group, and the
#                     same step with CUDA graphs (one group; groups of half the batch), side by side, 30 measured
#                     steps, with a profile of each
#   train_graphs_off, train_graphs_on   two epochs of trainers/train.py on that data, batch 32, --cuda_graphs off/on
#   bench_layouts_b32 the graphs' two layouts side by side: sequences packed into shared rows, one padded row each
#   model_1b, bench_1b_b32   the same on a Llama-3.2-1B-shaped model with random weights and the default model's
#                     tokenizer (speed does not depend on the weights): a size where arithmetic, not launches, bounds
#                     the step
# Needs MODEL, W and PYTHONPATH as gpu_call.sh sets them.
set -euo pipefail
: "${MODEL:?model folder}" "${W:?work folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"
CODE="$(dirname "$HERE")"
PY="python3 -u"
GEN_BATCH="${GEN_BATCH:-512}"
source "$HERE/gpu_stages.sh"
mkdir -p "$W/bench"

if stage data_speed; then
  $PY "$HERE/build_data.py" --model "$MODEL" --behaviors german words_10_50 --samples 3 --temperature 0.7 --filter \
      --limit 400 --batch_size "$GEN_BATCH" --dtype float32 --out_dir "$W/data_speed"
  mark data_speed
fi
if stage test_graphs; then
  (cd "$CODE" && $PY -m pytest -q -p no:cacheprovider tests/test_decoder_graphs.py 2>&1) | tee "$W/bench/test_graphs.log"
  mark test_graphs
fi
GERMAN="$W/data_speed/language/german_train.json"
bench() {  # label, batch size, more flags
  $PY "$CODE/benchmarks/bench_train.py" --model "$MODEL" --data "$GERMAN" --batch_size "$2" --steps 30 \
      --group_sizes 0 --graph_group_sizes 0 "$(($2 / 2))" --profile --label "$1" --out "$W/bench" "${@:3}"
}
if stage bench_b32; then bench h200_b32_graphs 32; mark bench_b32; fi
if stage bench_b8; then bench h200_b8_graphs 8; mark bench_b8; fi
for graphs in off on; do
  if stage "train_graphs_$graphs"; then
    $PY "$HERE/train.py" --stage behaviour --model "$MODEL" --data "$GERMAN" "$W/data_speed/length/words_10_50_train.json" \
        --tokens_dir "$W/tokens_speed_$graphs" --out_dir "$W/runs_speed/$graphs" --lr 3e-3 --epochs 2 \
        --batch_size 32 --log_every 10 --cuda_graphs "$graphs"
    mark "train_graphs_$graphs"
  fi
done
if stage bench_layouts_b32; then bench h200_b32_layouts 32 --graph_group_sizes 0 --graph_layouts packed padded
  mark bench_layouts_b32; fi
if stage model_1b; then
  $PY - "$MODEL" "$W/random-1b" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, LlamaForCausalLM
source, target = Path(sys.argv[1]), Path(sys.argv[2])
config = AutoConfig.from_pretrained(source)
config.update({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
               "num_key_value_heads": 8, "head_dim": 64})
torch.manual_seed(0)
LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(target)
for name in source.iterdir():
    if name.name.startswith(("tokenizer", "chat_template", "special_tokens")):
        shutil.copy(name, target / name.name)
PY
  mark model_1b
fi
if stage bench_1b_b32; then
  $PY "$CODE/benchmarks/bench_train.py" --model "$W/random-1b" --data "$GERMAN" --batch_size 32 --steps 10 \
      --group_sizes 0 --graph_group_sizes 0 --graph_layouts packed padded --label h200_1b_random_b32 --out "$W/bench"
  mark bench_1b_b32
fi
