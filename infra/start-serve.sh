#!/usr/bin/env bash
# Serve one Prefect deployment per run config (cron schedules from each config's `schedule`).
#
# Environment:
#   PREFECT_API_URL     the Prefect server's API, e.g. http://127.0.0.1:4200/api (required:
#                       without it Prefect silently starts a temporary server)
#   SYNTHGEN_CONFIGS    run configs to serve, space separated paths or globs
#                       (default /etc/synthgen/configs/*.yaml)
#   SYNTHGEN_BIN        the `synthgen` executable (default: synthgen on PATH)
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"

[[ -n "${PREFECT_API_URL:-}" ]] || die "PREFECT_API_URL is not set (e.g. http://127.0.0.1:4200/api)"
shopt -s nullglob
# shellcheck disable=SC2206
CONFIGS=(${SYNTHGEN_CONFIGS:-/etc/synthgen/configs/*.yaml})
[[ ${#CONFIGS[@]} -gt 0 ]] || die "no run configs match SYNTHGEN_CONFIGS=${SYNTHGEN_CONFIGS:-/etc/synthgen/configs/*.yaml}"
exec "${SYNTHGEN_BIN:-synthgen}" serve "${CONFIGS[@]}" "$@"
