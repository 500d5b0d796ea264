#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite. Extra arguments go to pytest (e.g. -m "not e2e").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/steer-eval models fetch smollm2-135m >/dev/null
.venv/bin/steer-eval models fetch gemma3-270m >/dev/null  # the e2e tests' second family (~238 MB, once)
# Two workers: the suite leaves one of two cores idle on its own (tests/conftest.py keeps engines and
# module fixtures to one worker each).
exec .venv/bin/python -m pytest -n "${STEER_EVAL_TEST_WORKERS:-2}" --dist loadgroup "$@"
