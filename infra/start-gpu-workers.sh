#!/usr/bin/env bash
# Start one Dask worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES and
# advertising one unit of the GPU resource; a generate task asks for 1/cluster.overlap of it,
# so each GPU holds `overlap` shards (one generating while the others read or write).
#
#   SYNTHGEN_SCHEDULER_ADDRESS=tls://sched.example:8786 infra/start-gpu-workers.sh          # all GPUs
#   SYNTHGEN_SCHEDULER_ADDRESS=tls://sched.example:8786 infra/start-gpu-workers.sh --gpu 1  # just GPU 1 (systemd template)
#
# Environment:
#   SYNTHGEN_SCHEDULER_ADDRESS  tls://HOST:PORT of the scheduler (required)
#   SYNTHGEN_TLS_DIR            ca.pem, worker.pem, worker-key.pem
#   SYNTHGEN_GPUS               GPU indices, comma separated (default: every GPU nvidia-smi lists)
#   SYNTHGEN_GPU_TYPE           device name advertised to synthgen's cost ledger
#                               (default: nvidia-smi's name of each GPU)
#   SYNTHGEN_GPU_RESOURCE       Dask resource name (default GPU; must match cluster.gpu_resource)
#   SYNTHGEN_WORKER_THREADS     threads per GPU worker (default 2; at least cluster.overlap)
#   SYNTHGEN_WORKER_NAME        name prefix (default: short hostname); workers are PREFIX-gpuN
#   SYNTHGEN_WORKER_HOST        address to listen on / advertise (default: dask's choice)
#   SYNTHGEN_WORKER_PORT_BASE   fixed worker port for GPU 0; GPU N uses BASE+N (for firewalls)
#   SYNTHGEN_WORKER_DIR         local scratch directory (default: dask's)
#   SYNTHGEN_DASK_BIN           the `dask` executable (default: dask on PATH)
# A worker's price is not set here: it is the operator's, in the run config
# (cost.worker_prices by this host's certificate name or PREFIX, else cost.prices).
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"

ONLY_GPU=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) ONLY_GPU="${2:?--gpu needs an index}"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done

ADDRESS="${SYNTHGEN_SCHEDULER_ADDRESS:-}"
require_tls_address "$ADDRESS" SYNTHGEN_SCHEDULER_ADDRESS
RESOURCE="${SYNTHGEN_GPU_RESOURCE:-GPU}"
[[ "$RESOURCE" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "SYNTHGEN_GPU_RESOURCE=$RESOURCE is not a valid resource name"
PREFIX="${SYNTHGEN_WORKER_NAME:-$(hostname -s)}"
tls_args worker

gpu_name() {
    if [[ -n "${SYNTHGEN_GPU_TYPE:-}" ]]; then echo "$SYNTHGEN_GPU_TYPE"; return; fi
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: set SYNTHGEN_GPU_TYPE and SYNTHGEN_GPUS"
    nvidia-smi --query-gpu=name --format=csv,noheader -i "$1" | head -n1
}

if [[ -n "$ONLY_GPU" ]]; then
    GPUS=("$ONLY_GPU")
elif [[ -n "${SYNTHGEN_GPUS:-}" ]]; then
    IFS=',' read -r -a GPUS <<<"$SYNTHGEN_GPUS"
else
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found and SYNTHGEN_GPUS unset: no GPUs to serve"
    mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader)
fi
[[ ${#GPUS[@]} -gt 0 ]] || die "no GPUs found"
for g in "${GPUS[@]}"; do
    [[ "$g" =~ ^[0-9]+$ ]] || die "GPU index '$g' is not a number (SYNTHGEN_GPUS=${SYNTHGEN_GPUS:-})"
done

# worker_cmd GPU -> WORKER_CMD array for that GPU
worker_cmd() {
    local gpu="$1" type
    type="$(gpu_name "$gpu")"
    WORKER_ENV=(CUDA_VISIBLE_DEVICES="$gpu" SYNTHGEN_GPU_TYPE="$type")
    WORKER_CMD=("$DASK_BIN" worker "$ADDRESS" "${TLS_ARGS[@]}"
        --name "$PREFIX-gpu$gpu" --nthreads "${SYNTHGEN_WORKER_THREADS:-2}" --resources "$RESOURCE=1"
        --dashboard-address 127.0.0.1:0)
    [[ -n "${SYNTHGEN_WORKER_HOST:-}" ]] && WORKER_CMD+=(--host "$SYNTHGEN_WORKER_HOST")
    [[ -n "${SYNTHGEN_WORKER_PORT_BASE:-}" ]] && WORKER_CMD+=(--worker-port "$((SYNTHGEN_WORKER_PORT_BASE + gpu))")
    [[ -n "${SYNTHGEN_WORKER_DIR:-}" ]] && WORKER_CMD+=(--local-directory "$SYNTHGEN_WORKER_DIR")
    echo "GPU $gpu ($type): ${WORKER_CMD[*]}" >&2
}

if [[ ${#GPUS[@]} -eq 1 ]]; then
    worker_cmd "${GPUS[0]}"
    exec env "${WORKER_ENV[@]}" "${WORKER_CMD[@]}"
fi

PIDS=()
stop_all() { trap - TERM INT; kill -TERM "${PIDS[@]}" 2>/dev/null || true; wait; }
trap 'stop_all; exit 143' TERM INT
for g in "${GPUS[@]}"; do
    worker_cmd "$g"
    env "${WORKER_ENV[@]}" "${WORKER_CMD[@]}" &
    PIDS+=($!)
done
# One worker process exiting (its nanny gave up) stops the set, so systemd restarts them together.
set +e
wait -n
status=$?
echo "a GPU worker exited with status $status; stopping the others" >&2
stop_all
exit "$status"
