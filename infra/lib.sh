# Shared helpers for the infra/start-*.sh scripts (sourced, not executed).
# Every setting is an environment variable; systemd units load them from
# /etc/synthgen/synthgen.env (see infra/.env.example).

if [[ -n "${SYNTHGEN_ENV_FILE:-}" ]]; then
    [[ -f "$SYNTHGEN_ENV_FILE" ]] || { echo "$0: SYNTHGEN_ENV_FILE=$SYNTHGEN_ENV_FILE not found" >&2; exit 1; }
    set -a
    # shellcheck disable=SC1090
    source "$SYNTHGEN_ENV_FILE"
    set +a
fi

SYNTHGEN_TLS_DIR="${SYNTHGEN_TLS_DIR:-/etc/synthgen/tls}"
DASK_BIN="${SYNTHGEN_DASK_BIN:-dask}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# tls_args ROLE -> the --tls-* flags for ROLE's certificate (scheduler|worker)
tls_args() {
    local role="$1" ca="${SYNTHGEN_TLS_DIR}/ca.pem"
    local cert="${SYNTHGEN_TLS_CERT:-${SYNTHGEN_TLS_DIR}/${role}.pem}"
    local key="${SYNTHGEN_TLS_KEY:-${SYNTHGEN_TLS_DIR}/${role}-key.pem}"
    local f
    for f in "$ca" "$cert" "$key"; do
        [[ -r "$f" ]] || die "TLS file $f is missing or unreadable (make it with infra/make-certs.sh; SYNTHGEN_TLS_DIR=$SYNTHGEN_TLS_DIR)"
    done
    TLS_ARGS=(--tls-ca-file "$ca" --tls-cert "$cert" --tls-key "$key")
    # certificate roles (synthgen.cluster.roles): a worker certificate cannot act as a
    # client, run code here or send pickles; in the worker's nanny too
    TLS_ARGS+=(--preload synthgen.cluster.roles)
    [[ "$role" == worker ]] && TLS_ARGS+=(--preload-nanny synthgen.cluster.roles)
    return 0
}

require_tls_address() {
    local addr="$1" name="$2"
    [[ -n "$addr" ]] || die "$name is not set (e.g. tls://scheduler.example:8786)"
    [[ "$addr" == tls://* ]] || die "$name=$addr must start with tls:// (cluster traffic is TLS only)"
}

# slug "NVIDIA GeForce RTX 4090" -> NVIDIA-GeForce-RTX-4090
slug() { echo "$1" | tr -cs 'A-Za-z0-9._' '-' | sed 's/^-*//; s/-*$//'; }
