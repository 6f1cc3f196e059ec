#!/usr/bin/env bash
# Start the Prefect server (API + UI) the way Prefect documents it, analytics off.
#
# Environment:
#   PREFECT_SERVER_API_HOST   default 127.0.0.1 (put a TLS reverse proxy in front for remote use)
#   PREFECT_SERVER_API_PORT   default 4200
#   PREFECT_HOME              state directory; the SQLite database lives here (default ~/.prefect)
#   PREFECT_API_DATABASE_CONNECTION_URL  optional, e.g. postgresql+asyncpg://... instead of SQLite
#   PREFECT_UI_API_URL        the API URL the browser should use, when it differs from
#                             http://HOST:PORT/api (behind a proxy)
# Start the server with HOST/PORT from these variables, not only `--port`: otherwise the UI
# points its API calls at port 4200.
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"

export PREFECT_SERVER_API_HOST="${PREFECT_SERVER_API_HOST:-127.0.0.1}"
export PREFECT_SERVER_API_PORT="${PREFECT_SERVER_API_PORT:-4200}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
# The server's own CLI must talk to itself, not spin up a temporary one.
export PREFECT_API_URL="${PREFECT_API_URL:-http://$PREFECT_SERVER_API_HOST:$PREFECT_SERVER_API_PORT/api}"
if [[ -n "${PREFECT_HOME:-}" ]]; then mkdir -p "$PREFECT_HOME"; fi
echo "prefect server: $PREFECT_API_URL (UI at ${PREFECT_API_URL%/api})" >&2
exec "${SYNTHGEN_PREFECT_BIN:-prefect}" server start --analytics-off "$@"
