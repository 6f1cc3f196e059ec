#!/usr/bin/env bash
# Create a private CA and TLS certificates for a synthgen Dask cluster.
#
#   infra/make-certs.sh [OPTIONS] OUTDIR
#
# Makes, in OUTDIR (created mode 0700):
#   ca.pem / ca-key.pem              the cluster CA (keep ca-key.pem OFF the workers)
#   scheduler.pem / scheduler-key.pem  serverAuth + clientAuth
#   worker.pem / worker-key.pem        serverAuth + clientAuth (workers listen AND dial)
#   client.pem / client-key.pem        clientAuth (the flow / `synthgen run` host)
#
# Options:
#   --san LIST     subjectAltName for scheduler and worker certs
#                  (default: IP:127.0.0.1,DNS:localhost; e.g. "IP:203.0.113.7,DNS:sched.example")
#   --days N       validity of the leaf certificates (default 365; the CA gets 10x)
#   --issue ROLE NAME   only issue one more certificate NAME.pem/NAME-key.pem for ROLE
#                  (scheduler|worker|client) from the CA already in OUTDIR
#   --force        overwrite existing files
#
# Each certificate carries its role (OU=synthgen-ROLE). distributed does not check
# hostnames or roles: any certificate signed by the CA connects. The role is enforced by
# synthgen.cluster.roles, which the start-*.sh scripts preload: a worker certificate cannot
# act as a client, run code on the scheduler or other workers, or send them pickles.
# Rented hosts: issue one worker certificate per host (--issue worker HOST) so the run's
# summary can name the host a refused connection came from. Keep ca-key.pem offline.
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

SAN="IP:127.0.0.1,DNS:localhost"
DAYS=365
FORCE=0
ISSUE_ROLE=""
ISSUE_NAME=""
OUTDIR=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --san) SAN="${2:?--san needs a value}"; shift 2 ;;
        --days) DAYS="${2:?--days needs a value}"; shift 2 ;;
        --issue) ISSUE_ROLE="${2:?--issue needs ROLE NAME}"; ISSUE_NAME="${3:?--issue needs ROLE NAME}"; shift 3 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "make-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [[ -z "$OUTDIR" ]] || { echo "make-certs.sh: only one OUTDIR" >&2; exit 2; }; OUTDIR="$1"; shift ;;
    esac
done

[[ -n "$OUTDIR" ]] || { echo "make-certs.sh: OUTDIR is required" >&2; usage >&2; exit 2; }
[[ "$DAYS" =~ ^[1-9][0-9]*$ ]] || { echo "make-certs.sh: --days must be a positive integer, got '$DAYS'" >&2; exit 2; }
if [[ ! "$SAN" =~ ^((IP|DNS):[^,[:space:]]+)(,(IP|DNS):[^,[:space:]]+)*$ ]]; then
    echo "make-certs.sh: --san must look like IP:1.2.3.4,DNS:host.example, got '$SAN'" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found on PATH" >&2; exit 1; }

umask 077
mkdir -p "$OUTDIR"
chmod 700 "$OUTDIR"

refuse_overwrite() {
    local f
    for f in "$@"; do
        if [[ -e "$OUTDIR/$f" && "$FORCE" != 1 ]]; then
            echo "make-certs.sh: $OUTDIR/$f exists (use --force to overwrite)" >&2
            exit 1
        fi
    done
}

make_ca() {
    refuse_overwrite ca.pem ca-key.pem
    openssl req -x509 -newkey rsa:3072 -nodes -sha256 \
        -keyout "$OUTDIR/ca-key.pem" -out "$OUTDIR/ca.pem" \
        -days "$((DAYS * 10))" -subj "/CN=synthgen-cluster-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# issue ROLE NAME: NAME.pem + NAME-key.pem signed by the CA in OUTDIR
issue() {
    local role="$1" name="$2" eku ext
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || { echo "make-certs.sh: bad certificate name '$name'" >&2; exit 2; }
    case "$role" in
        scheduler|worker) eku="serverAuth,clientAuth" ;;
        client) eku="clientAuth" ;;
        *) echo "make-certs.sh: role must be scheduler, worker or client, got '$role'" >&2; exit 2 ;;
    esac
    [[ -f "$OUTDIR/ca.pem" && -f "$OUTDIR/ca-key.pem" ]] \
        || { echo "make-certs.sh: no CA in $OUTDIR (run without --issue first)" >&2; exit 1; }
    refuse_overwrite "$name.pem" "$name-key.pem"
    ext="$(mktemp)"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        if [[ "$role" != client ]]; then echo "subjectAltName=$SAN"; fi
    } >"$ext"
    openssl req -newkey rsa:2048 -nodes -sha256 \
        -keyout "$OUTDIR/$name-key.pem" -out "$OUTDIR/$name.csr" \
        -subj "/OU=synthgen-$role/CN=synthgen-$name" 2>/dev/null
    openssl x509 -req -sha256 -in "$OUTDIR/$name.csr" \
        -CA "$OUTDIR/ca.pem" -CAkey "$OUTDIR/ca-key.pem" -CAcreateserial \
        -out "$OUTDIR/$name.pem" -days "$DAYS" -extfile "$ext" 2>/dev/null
    rm -f "$ext" "$OUTDIR/$name.csr"
    chmod 600 "$OUTDIR/$name-key.pem"
    chmod 644 "$OUTDIR/$name.pem"
    openssl verify -CAfile "$OUTDIR/ca.pem" "$OUTDIR/$name.pem" >/dev/null
}

if [[ -n "$ISSUE_ROLE" ]]; then
    issue "$ISSUE_ROLE" "$ISSUE_NAME"
    echo "issued $OUTDIR/$ISSUE_NAME.pem ($ISSUE_ROLE)"
    exit 0
fi

make_ca
chmod 600 "$OUTDIR/ca-key.pem"
chmod 644 "$OUTDIR/ca.pem"
issue scheduler scheduler
issue worker worker
issue client client
rm -f "$OUTDIR/ca.srl"
cat <<EOF
certificates in $OUTDIR (SAN $SAN, valid $DAYS days):
  scheduler host: ca.pem scheduler.pem scheduler-key.pem
  GPU workers:    ca.pem worker.pem worker-key.pem
  flow / client:  ca.pem client.pem client-key.pem
keep ca-key.pem offline; it can mint certificates the cluster trusts.
EOF
