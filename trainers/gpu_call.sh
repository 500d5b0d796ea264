#!/usr/bin/env bash
# One call on a lent GPU machine (docs/training.md), run from the root of the carried checkout. The 98 MB GGUF
# travels in three pieces (a call carries at most 64 MiB): earlier calls copied .gpu/a1/part1 and .gpu/a2/part1b to
# /root/cache and the regex package to /root/r (trainers/gpu_carry.sh); this
# one carries .gpu/b (part2, the pure-Python packages gguf and py3langid, the tokenizer files of the local model
# folder) and .gpu/code (steer_eval + trainers). It rebuilds the model folder once, checks that its embedding
# fingerprint equals the CPU folder's, runs (or resumes) trainers/gpu_pipeline.sh for BUDGET seconds and packs
# what it made into $OUT.
set -uo pipefail
CODE="$PWD/.gpu/code"
export W=/root/w MODEL=/root/w/SmolLM2-135M-Instruct
mkdir -p "$W" /root/cache
if [ -d .gpu/b/site ] && [ ! -d /root/site ]; then cp -r .gpu/b/site /root/site; fi
export PYTHONPATH="$CODE:/root/site:/root/r" TQDM_MININTERVAL=30 PYTHONUNBUFFERED=1
if [ ! -f "$MODEL/model.safetensors" ]; then
  cat /root/cache/part1 /root/cache/part1b .gpu/b/part2 > /root/cache/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
  python3 - "$EXPECTED_FINGERPRINT" <<'EOF' || exit 4
import shutil, sys
from pathlib import Path
import torch
from steer_eval.steering.embedded import EMBEDDED_MODELS, _convert
from steer_eval.steering.model_store import file_sha256
from steer_eval.steering.models import load_model
from steer_eval.steering.tokens import ModelIdentity
spec = EMBEDDED_MODELS["smollm2-135m"]
gguf = Path("/root/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
assert file_sha256(gguf) == spec.gguf_sha256, "GGUF pieces do not join to the published file"
target = Path("/root/w/SmolLM2-135M-Instruct")
_convert(spec, gguf, target)
for name in Path(".gpu/b/tok").iterdir():  # the CPU folder's tokenizer and config, so ids match exactly
    shutil.copy(name, target / name.name)
model, _ = load_model(str(target), device="cpu", dtype="float32")
got = ModelIdentity.of("x", model.get_input_embeddings().weight).fingerprint
print("embedding fingerprint", got, "expected", sys.argv[1])
sys.exit(0 if got == sys.argv[1] else 1)
EOF
fi
# A fresh machine continues from what an earlier one made; a warm one keeps its newer files (restoring again would
# put an older checkpoint back over them).
if [ -d .gpu/state ] && [ ! -f "$W/.restored" ]; then
  for f in .gpu/state/*.tgz; do tar xzf "$f" -C "$W"; done
  touch "$W/.restored"
  [ -f "$W/done.data_pairs" ] && mv "$W/done.data_pairs" "$W/done.data_pairs_s1"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
export P="$CODE/trainers/gpu_pipeline.sh"
timeout "${BUDGET:-540}" bash -c "${RUN:-bash \$P}" >> "$W/pipeline.log" 2>&1
echo "pipeline rc=$? (124 = stopped at the budget; run again to resume)"
grep -v "it/s\]$" "$W/pipeline.log" | tail -c 5000
cd "$W" && tar czf "$OUT/small.tgz" shipped.txt done.* tokens* baseline_tokens caa_sweep runs*/*/log.jsonl runs*/*/summary.json \
    eval*/*/table.* pipeline.log data*/*/*.meta.json bench 2>/dev/null
tar czf "$OUT/records.tgz" eval/text_records eval/baselines eval*/records eval*/val_records eval*/*/records 2>/dev/null
tar czf "$OUT/data.tgz" ${DATA_PACK:-data*} 2>/dev/null  # DATA_PACK: what of the data to bring back
ls -la "$OUT"
