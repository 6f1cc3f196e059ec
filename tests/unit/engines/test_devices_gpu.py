"""Device helpers used for GPU presets: dtype rule, short names, live detection."""

from __future__ import annotations

import pytest

from synthgen.engines.devices import DeviceInfo, detect_device, gpu_short_name, preferred_dtype


@pytest.mark.parametrize(
    ("cc", "dtype"),
    [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")],
)
def test_preferred_dtype(cc: tuple[int, int], dtype: str) -> None:
    assert preferred_dtype(DeviceInfo("cuda", "g", 1, 24.0, cc)) == dtype


def test_preferred_dtype_cpu_and_unknown_cc() -> None:
    assert preferred_dtype(DeviceInfo("cpu", "x", 2)) == "float32"
    assert preferred_dtype(DeviceInfo("cuda", "g", 1, 24.0, None)) == "float16"


def test_gpu_short_name() -> None:
    assert gpu_short_name("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert gpu_short_name("Tesla T4") == "T4"
    assert gpu_short_name("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"


def test_detect_device_cpu_preference() -> None:
    d = detect_device("cpu")
    assert d.kind == "cpu" and d.count >= 1 and d.label.startswith("cpu: ")
