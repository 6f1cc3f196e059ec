"""Worker-side device detection: GPU name, memory and compute capability, or CPU model."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "cpu"
    name: str  # "NVIDIA GeForce RTX 4090" or the CPU model
    count: int = 1  # CUDA devices visible, or CPU cores usable by this process
    memory_gb: float | None = None
    compute_capability: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        if self.kind == "cpu":
            return f"cpu: {self.name} ({self.count} cores)"
        return self.name

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def detect_device(prefer: str = "auto") -> DeviceInfo:
    """CUDA device 0 when present (and not `prefer == "cpu"`), else the CPU."""
    if prefer != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                return DeviceInfo(
                    kind="cuda",
                    name=props.name,
                    count=torch.cuda.device_count(),
                    memory_gb=round(props.total_memory / 2**30, 1),
                    compute_capability=(props.major, props.minor),
                )
        except Exception:  # torch missing or CUDA broken: fall back to CPU
            pass
    return DeviceInfo(kind="cpu", name=cpu_model_name(), count=usable_cores())


# --------------------------------------------------------------------------- dtype choice
BF16_MIN_CAPABILITY: tuple[int, int] = (8, 0)  # Ampere and newer


def preferred_dtype(device: DeviceInfo) -> str:
    """The 16-bit dtype a device runs best: bfloat16 from compute capability 8.0 (Ampere:
    A100, RTX 30xx/40xx, L4, H100), float16 on older GPUs; float32 on CPU."""
    if device.kind != "cuda":
        return "float32"
    if device.compute_capability is not None and device.compute_capability >= BF16_MIN_CAPABILITY:
        return "bfloat16"
    return "float16"


def gpu_short_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'RTX 4090'; 'NVIDIA A100-SXM4-80GB' -> 'A100-SXM4-80GB'."""
    short = name.strip()
    for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
        if short.startswith(prefix):
            short = short[len(prefix) :]
    return short or name
