#!/usr/bin/env bash
# Start the Dask scheduler with TLS (mutual: every worker and client needs a CA-signed cert).
#
#   SYNTHGEN_TLS_DIR=/etc/synthgen/tls infra/start-scheduler.sh
#
# Environment:
#   SYNTHGEN_TLS_DIR             ca.pem, scheduler.pem, scheduler-key.pem (infra/make-certs.sh)
#   SYNTHGEN_SCHEDULER_HOST      interface to listen on (default 0.0.0.0: workers on the internet)
#   SYNTHGEN_SCHEDULER_PORT      default 8786
#   SYNTHGEN_SCHEDULER_DASHBOARD dashboard address (default 127.0.0.1:8787; reach it via ssh -L)
#   SYNTHGEN_DASK_BIN            the `dask` executable (default: dask on PATH)
#   DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION  default 1.0: no extra shards queued on a
#                                busy GPU worker, so the last shards go to whichever frees up first
#   DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL  default 120s (Dask's: 5 minutes): a worker not heard
#                                from for this long is removed and its shards re-run elsewhere.
#                                Long enough for a brief internet outage (workers heartbeat every
#                                0.5-2 s), short enough that a frozen host's queued shards move
#                                within two minutes; the flow's shard deadlines move its running
#                                shard sooner (docs/robust.md)
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"

HOST="${SYNTHGEN_SCHEDULER_HOST:-0.0.0.0}"
PORT="${SYNTHGEN_SCHEDULER_PORT:-8786}"
DASHBOARD="${SYNTHGEN_SCHEDULER_DASHBOARD:-127.0.0.1:8787}"
tls_args scheduler
export DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="${DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION:-1.0}"
export DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="${DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL:-120s}"

echo "dask scheduler: tls://$HOST:$PORT (dashboard http://$DASHBOARD)" >&2
exec "$DASK_BIN" scheduler --protocol tls --host "$HOST" --port "$PORT" \
    --dashboard-address "$DASHBOARD" "${TLS_ARGS[@]}" "$@"
