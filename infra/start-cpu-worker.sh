#!/usr/bin/env bash
# Start a CPU-only Dask worker (no GPU resource): it runs the clean stage, publishing
# and CPU-engine shards, never a generate task that asks for a GPU.
#
# Environment: SYNTHGEN_SCHEDULER_ADDRESS (required), SYNTHGEN_TLS_DIR,
#   SYNTHGEN_CPU_THREADS (default 2), SYNTHGEN_WORKER_NAME (default: short hostname; worker
#   is PREFIX-cpu), SYNTHGEN_WORKER_HOST, SYNTHGEN_WORKER_DIR, SYNTHGEN_DASK_BIN.
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"

ADDRESS="${SYNTHGEN_SCHEDULER_ADDRESS:-}"
require_tls_address "$ADDRESS" SYNTHGEN_SCHEDULER_ADDRESS
THREADS="${SYNTHGEN_CPU_THREADS:-2}"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "SYNTHGEN_CPU_THREADS=$THREADS is not a positive integer"
tls_args worker
CMD=("$DASK_BIN" worker "$ADDRESS" "${TLS_ARGS[@]}"
    --name "${SYNTHGEN_WORKER_NAME:-$(hostname -s)}-cpu" --nthreads "$THREADS"
    --dashboard-address 127.0.0.1:0)
[[ -n "${SYNTHGEN_WORKER_HOST:-}" ]] && CMD+=(--host "$SYNTHGEN_WORKER_HOST")
[[ -n "${SYNTHGEN_WORKER_DIR:-}" ]] && CMD+=(--local-directory "$SYNTHGEN_WORKER_DIR")
echo "${CMD[*]}" >&2
exec env CUDA_VISIBLE_DEVICES= "${CMD[@]}" "$@"
