"""vLLM engine presets (configs/presets/*.yaml) and their resolution on a worker.

A worker detects the device vLLM runs on (synthgen.engines.devices). On a GPU it picks the preset
whose name pattern and memory range match; on vLLM's CPU build, the `device: cpu` preset.
The preset is merged with the user's config: a value the user set is pinned and always
wins; dtype follows compute capability (bf16 from 8.0, fp16 before) unless pinned; 24 GB
cards switch to the quantised model variant when 16-bit weights do not fit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from synthgen.config import ModelConfig
from synthgen.engines.devices import DeviceInfo, preferred_dtype
from synthgen.errors import ConfigError, EngineError

DEFAULT_PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs" / "presets"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class GpuPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="cpu: the preset for vLLM's CPU build (GPU-only keys unused)."
    )
    match: list[str] = Field(
        default_factory=list, description="Whole-word patterns matched in the GPU name."
    )
    memory_gb: tuple[float, float] | None = Field(
        None, description="Inclusive [min, max] GiB of one GPU; unset = any size."
    )
    fallback: bool = Field(False, description="Used when no other preset matches.")
    dtype: str | None = Field(None, description="Unset: from compute capability.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_num_seqs: PositiveInt = 128
    max_model_len: PositiveInt | None = None
    kv_headroom: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of the memory budget kept for the KV cache."
    )
    quantization: str | None = Field(
        None, description="Method used with model.vllm.quantized_path when weights do not fit."
    )
    kv_cache_gb: float | None = Field(
        None, gt=0.0, description="KV-cache GiB (kv_cache_memory_bytes). Unset on GPUs."
    )
    enforce_eager: bool | None = Field(None, description="Unset: false (compile).")
    tokens_per_s: float | None = Field(
        None,
        gt=0.0,
        description="Planning figure: completion tokens/s one worker of this GPU is expected "
        "to give (batched decoding, a ~8B model). Only sizes default shards "
        "(`shards.size` unset; the slowest preset's figure); never measured by synthgen.",
    )

    def matches(self, device: DeviceInfo) -> bool:
        if device.kind == "cpu":
            return self.device == "cpu"
        if self.fallback or device.kind != "cuda" or self.device != "cuda":
            return False
        if not any(_word_in(p, device.name) for p in self.match):
            return False
        if self.memory_gb is not None and device.memory_gb is not None:
            lo, hi = self.memory_gb
            return lo <= device.memory_gb <= hi
        return True


def _word_in(pattern: str, name: str) -> bool:
    """'L4' matches 'NVIDIA L4' but not 'NVIDIA L40S'."""
    return (
        re.search(rf"(?<![A-Za-z0-9]){re.escape(pattern)}(?![A-Za-z0-9])", name, re.I) is not None
    )


def load_presets(directory: str | Path | None = None) -> list[GpuPreset]:
    """Every *.yaml preset in `directory` (default: the bundled configs/presets/), by name."""
    root = Path(directory) if directory else DEFAULT_PRESETS_DIR
    if not root.is_dir():
        raise ConfigError(f"model.vllm.presets_dir: {root} is not a directory")
    presets: dict[str, GpuPreset] = {}
    for path in sorted(root.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            preset = GpuPreset.model_validate(data)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"{path}: invalid preset: {errs}") from None
        if preset.name in presets:
            raise ConfigError(f"{path}: duplicate preset name {preset.name!r}")
        presets[preset.name] = preset
    if not presets:
        raise ConfigError(f"model.vllm.presets_dir: no *.yaml presets in {root}")
    return list(presets.values())


def select_preset(
    device: DeviceInfo, presets: list[GpuPreset], forced: str | None = None
) -> GpuPreset | None:
    """The preset for `device`: `forced` by name ('none' = no preset), else the first
    name+memory match, else the fallback preset (GPUs); the `device: cpu` preset on CPU.
    A GPU preset forced on a CPU worker (or the reverse) is an error."""
    if forced is not None:
        if forced.lower() == "none":
            return None
        for p in presets:
            if p.name == forced:
                if p.device != device.kind:
                    raise EngineError(
                        f"model.vllm.preset: {forced!r} is a {p.device} preset but this vLLM "
                        f"worker runs on {device.label}"
                    )
                return p
        names = ", ".join(p.name for p in presets)
        raise ConfigError(f"model.vllm.preset: unknown preset {forced!r} (known: {names})")
    if device.kind == "cpu":
        return next((p for p in presets if p.matches(device)), None)
    if device.kind != "cuda":
        return None
    for p in presets:
        if p.matches(device):
            return p
    return next((p for p in presets if p.fallback), None)


def weights_gb(path: str | None) -> float | None:
    """Size in GiB of the weight files of a local model directory; None if not local."""
    if not path:
        return None
    root = Path(path)
    if root.is_file():
        return root.stat().st_size / 2**30
    if not root.is_dir():
        return None
    files = [f for f in root.rglob("*") if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)]
    # A directory may hold both .bin and .safetensors copies: count one format only.
    st = [f for f in files if f.name.endswith(".safetensors")]
    chosen = st or files
    return sum(f.stat().st_size for f in chosen) / 2**30 if chosen else None


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def model_context_len(path: str | None) -> int | None:
    """The context length in a local model directory's config.json; None if unknown."""
    if not path:
        return None
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    configs = [data, data.get("text_config") or {}]
    for c in configs:
        for key in _CONTEXT_KEYS:
            value = c.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


@dataclass
class VllmSettings:
    """What the engine passes to vllm.LLM, and where each value came from."""

    model: str
    dtype: str
    gpu_memory_utilization: float
    max_num_seqs: int
    max_model_len: int | None
    tensor_parallel_size: int
    quantization: str | None
    preset: str | None
    sources: dict[str, str] = field(default_factory=dict)  # key -> pinned|preset:X|device|default
    fit: str = "unknown"  # fits | quantized | unknown
    device: str = "cuda"  # what vLLM runs on: cuda | cpu
    kv_cache_gb: float | None = None
    enforce_eager: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_DEFAULTS = {"gpu_memory_utilization": 0.9, "max_num_seqs": 128}
# vLLM's own CPU default sizes the KV cache from gpu_memory_utilization x *all* RAM and fails
# when other processes hold some; a fixed size works on a shared host.
CPU_KV_CACHE_GB = 2.0


def resolve_vllm_settings(
    model: ModelConfig, device: DeviceInfo, presets: list[GpuPreset] | None = None
) -> VllmSettings:
    """Merge pinned config, the device's preset and defaults into vLLM settings."""
    if not model.path:
        raise ConfigError(
            "model.path: the vllm engine needs a model directory here (the engine resolves an "
            "unset path to the de-quantised bundled model before calling this)"
        )
    opts = model.vllm
    if presets is None:
        presets = [] if (opts.preset or "").lower() == "none" else load_presets(opts.presets_dir)
    preset = select_preset(device, presets, opts.preset)
    tag = f"preset:{preset.name}" if preset else "default"
    sources: dict[str, str] = {}

    def pick(key: str, pinned: Any, from_preset: Any, default: Any) -> Any:
        if pinned is not None:
            sources[key] = "pinned"
            return pinned
        if from_preset is not None:
            sources[key] = tag
            return from_preset
        sources[key] = "default"
        return default

    util = pick(
        "gpu_memory_utilization",
        opts.gpu_memory_utilization,
        preset.gpu_memory_utilization if preset else None,
        _DEFAULTS["gpu_memory_utilization"],
    )
    seqs = pick(
        "max_num_seqs",
        opts.max_num_seqs,
        preset.max_num_seqs if preset else None,
        _DEFAULTS["max_num_seqs"],
    )
    max_len = pick(
        "max_model_len", model.max_model_len, preset.max_model_len if preset else None, None
    )
    native = model_context_len(model.path)
    if sources["max_model_len"] != "pinned" and max_len and native and native < max_len:
        max_len, sources["max_model_len"] = native, "model"  # a preset value only caps it
    dtype: str
    if model.dtype != "auto":
        dtype, sources["dtype"] = model.dtype, "pinned"
    elif preset and preset.dtype:
        dtype, sources["dtype"] = preset.dtype, tag
    else:
        dtype, sources["dtype"] = preferred_dtype(device), "device"

    # recorded in `sources` only where set (GPUs leave both to vLLM by default)
    kv_gb = opts.kv_cache_gb or (preset.kv_cache_gb if preset else None)
    if kv_gb is None and device.kind == "cpu":
        kv_gb = pick("kv_cache_gb", None, None, CPU_KV_CACHE_GB)
    elif kv_gb is not None:
        kv_gb = pick("kv_cache_gb", opts.kv_cache_gb, preset.kv_cache_gb if preset else None, 0)
    eager = bool(opts.enforce_eager if opts.enforce_eager is not None else False)
    if opts.enforce_eager is not None or (preset and preset.enforce_eager is not None):
        eager = pick(
            "enforce_eager", opts.enforce_eager, preset.enforce_eager if preset else None, False
        )

    settings = VllmSettings(
        model=model.path,
        dtype=dtype,
        gpu_memory_utilization=util,
        max_num_seqs=seqs,
        max_model_len=max_len,
        tensor_parallel_size=opts.tensor_parallel_size,
        quantization=opts.quantization,
        preset=preset.name if preset else None,
        sources=sources,
        device=device.kind,
        kv_cache_gb=kv_gb,
        enforce_eager=eager,
    )
    if opts.quantization is not None:
        sources["quantization"] = "pinned"
    _apply_fit(settings, model, device, preset)
    return settings


def _apply_fit(
    settings: VllmSettings, model: ModelConfig, device: DeviceInfo, preset: GpuPreset | None
) -> None:
    """Switch to the quantised variant when the 16-bit weights leave no room for KV cache."""
    opts = model.vllm
    size = opts.model_size_gb or weights_gb(model.path)
    if size is None or device.memory_gb is None:
        settings.fit = "unknown"
        return
    headroom = preset.kv_headroom if preset else 0.2
    budget = device.memory_gb * settings.tensor_parallel_size * settings.gpu_memory_utilization
    usable = budget * (1.0 - headroom)
    if size <= usable:
        settings.fit = "fits"
        return
    if opts.quantized_path:
        settings.model = opts.quantized_path
        settings.sources["model"] = "quantized_path"
        if opts.quantization is None:
            settings.quantization = preset.quantization if preset else None
            settings.sources["quantization"] = f"preset:{preset.name}" if preset else "checkpoint"
        settings.fit = "quantized"
        return
    if opts.quantization is not None:  # on-the-fly quantisation the user chose: trust it
        settings.fit = "pinned"
        return
    where = f"{device.name} ({device.memory_gb:g} GiB x {settings.tensor_parallel_size})"
    raise EngineError(
        f"model {model.path}: 16-bit weights need {size:.1f} GiB but {where} leaves "
        f"{usable:.1f} GiB after KV-cache headroom; set model.vllm.quantized_path to a "
        "quantised variant (e.g. AWQ), pin model.vllm.quantization, or raise "
        "model.vllm.tensor_parallel_size"
    )
