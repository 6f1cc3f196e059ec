"""GPU presets: selection by name and memory, dtype rule, pinning, quantised fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.config import ModelConfig, VllmOptions
from synthgen.engines.devices import DeviceInfo
from synthgen.engines.presets import (
    load_presets,
    model_context_len,
    resolve_vllm_settings,
    select_preset,
    weights_gb,
)
from synthgen.errors import ConfigError, EngineError

# Names and memory as torch reports them on the real cards.
CARDS = {
    "NVIDIA GeForce RTX 3090": (23.7, (8, 6), "rtx-3090"),
    "NVIDIA GeForce RTX 4090": (23.6, (8, 9), "rtx-4090"),
    "NVIDIA L4": (22.0, (8, 9), "l4"),
    "NVIDIA A100-PCIE-40GB": (39.4, (8, 0), "a100-40gb"),
    "NVIDIA A100-SXM4-80GB": (79.2, (8, 0), "a100-80gb"),
    "NVIDIA H100 80GB HBM3": (79.1, (9, 0), "h100"),
    "NVIDIA L40S": (44.4, (8, 9), "generic"),  # 'L4' must not match 'L40S'
    "Tesla T4": (14.6, (7, 5), "generic"),
}


def dev(name: str) -> DeviceInfo:
    mem, cc, _ = CARDS[name]
    return DeviceInfo("cuda", name, 1, mem, cc)


def cfg(**vllm: object) -> ModelConfig:
    extra = {k: vllm.pop(k) for k in ("dtype", "max_model_len") if k in vllm}
    return ModelConfig(engine="vllm", path="org/m", vllm=VllmOptions(**vllm), **extra)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_select_preset_per_card(name: str) -> None:
    preset = select_preset(dev(name), load_presets())
    assert preset is not None and preset.name == CARDS[name][2]


def test_bundled_presets_cover_the_issue_cards() -> None:
    names = {p.name for p in load_presets()}
    assert {"rtx-3090", "rtx-4090", "a100-40gb", "a100-80gb", "h100", "l4", "generic"} <= names


def test_select_preset_cpu_forced_and_none() -> None:
    presets = load_presets()
    cpu = select_preset(DeviceInfo("cpu", "x", 2), presets)  # vLLM's CPU build
    assert cpu is not None and cpu.name == "cpu" and cpu.device == "cpu"
    assert select_preset(DeviceInfo("cpu", "x", 2), [p for p in presets if p != cpu]) is None
    assert all(p.device == "cuda" for p in presets if p.matches(dev("NVIDIA GeForce RTX 4090")))
    forced = select_preset(dev("Tesla T4"), presets, forced="a100-80gb")
    assert forced is not None and forced.name == "a100-80gb"
    assert select_preset(dev("Tesla T4"), presets, forced="none") is None
    with pytest.raises(ConfigError, match="model.vllm.preset: unknown preset 'nope'"):
        select_preset(dev("Tesla T4"), presets, forced="nope")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("NVIDIA A100-SXM4-80GB", "bfloat16"),
        ("NVIDIA GeForce RTX 3090", "bfloat16"),
        ("Tesla T4", "float16"),
    ],
)
def test_dtype_from_compute_capability(name: str, dtype: str) -> None:
    s = resolve_vllm_settings(cfg(), dev(name))
    assert s.dtype == dtype and s.sources["dtype"] == "device"


def test_pinned_values_win_over_preset() -> None:
    s = resolve_vllm_settings(
        cfg(gpu_memory_utilization=0.5, max_num_seqs=4, dtype="float16", max_model_len=1024),
        dev("NVIDIA H100 80GB HBM3"),
    )
    assert (s.gpu_memory_utilization, s.max_num_seqs, s.dtype, s.max_model_len) == (
        0.5,
        4,
        "float16",
        1024,
    )
    assert set(s.sources.values()) == {"pinned"}
    t = resolve_vllm_settings(cfg(), dev("NVIDIA H100 80GB HBM3"))
    assert (t.gpu_memory_utilization, t.max_num_seqs, t.max_model_len) == (0.92, 512, 16384)
    assert t.sources["max_num_seqs"] == "preset:h100"


def test_quantised_variant_on_24gb_card_when_weights_do_not_fit() -> None:
    # a 14B model: ~28 GiB in bf16 does not fit a 24 GB card, fits an 80 GB one
    c = cfg(model_size_gb=28.0, quantized_path="org/m-awq")
    small = resolve_vllm_settings(c, dev("NVIDIA GeForce RTX 4090"))
    assert (small.model, small.quantization, small.fit) == ("org/m-awq", "awq_marlin", "quantized")
    big = resolve_vllm_settings(c, dev("NVIDIA A100-SXM4-80GB"))
    assert (big.model, big.quantization, big.fit) == ("org/m", None, "fits")
    # a pinned method is used with the variant instead of the preset's
    pinned = resolve_vllm_settings(
        cfg(model_size_gb=28.0, quantized_path="org/m-gptq", quantization="gptq"),
        dev("NVIDIA GeForce RTX 3090"),
    )
    assert (pinned.model, pinned.quantization) == ("org/m-gptq", "gptq")


def test_does_not_fit_without_variant_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match=r"28\.0 GiB.*RTX 4090.*model.vllm.quantized_path"):
        resolve_vllm_settings(cfg(model_size_gb=28.0), dev("NVIDIA GeForce RTX 4090"))
    # tensor parallelism over two cards makes it fit
    s = resolve_vllm_settings(
        cfg(model_size_gb=28.0, tensor_parallel_size=2), dev("NVIDIA GeForce RTX 4090")
    )
    assert s.fit == "fits"


def test_weights_gb_from_local_dir(tmp_path: Path) -> None:
    (tmp_path / "model-00001.safetensors").write_bytes(b"\0" * 2**20)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 2**21)  # duplicate format: ignored
    (tmp_path / "config.json").write_text("{}")
    assert weights_gb(str(tmp_path)) == pytest.approx(1 / 1024)
    assert weights_gb("org/hub-id") is None
    assert weights_gb(None) is None


def test_bad_preset_file_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("name: x\nmax_num_seqs: -1\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: invalid preset: max_num_seqs"):
        load_presets(tmp_path)
    with pytest.raises(ConfigError, match="model.vllm.presets_dir"):
        load_presets(tmp_path / "missing")


def test_custom_presets_dir(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "name: mine\nmatch: ['RTX 4090']\nmax_num_seqs: 5\ngpu_memory_utilization: 0.8\n"
    )
    s = resolve_vllm_settings(cfg(presets_dir=str(tmp_path)), dev("NVIDIA GeForce RTX 4090"))
    assert (s.preset, s.max_num_seqs, s.gpu_memory_utilization) == ("mine", 5, 0.8)


def test_preset_context_capped_by_model_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')
    c = ModelConfig(engine="vllm", path=str(tmp_path))
    s = resolve_vllm_settings(c, dev("NVIDIA H100 80GB HBM3"))
    assert (s.max_model_len, s.sources["max_model_len"]) == (2048, "model")  # preset: 16384
    assert model_context_len(str(tmp_path)) == 2048 and model_context_len("org/hub") is None
    pinned = ModelConfig(engine="vllm", path=str(tmp_path), max_model_len=8192)
    assert resolve_vllm_settings(pinned, dev("NVIDIA H100 80GB HBM3")).max_model_len == 8192


def test_example_mixed_gpu_config_resolves_per_card() -> None:
    from synthgen.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[3] / "configs/examples/vllm-mixed-gpus.yaml")
    on_3090 = resolve_vllm_settings(cfg.model, dev("NVIDIA GeForce RTX 3090"))
    on_a100 = resolve_vllm_settings(cfg.model, dev("NVIDIA A100-SXM4-80GB"))
    assert on_3090.model.endswith("-AWQ") and on_3090.fit == "quantized"
    assert on_a100.model.endswith("14B-Instruct") and on_a100.fit == "fits"
    assert (on_3090.max_num_seqs, on_a100.max_num_seqs) == (128, 256)
