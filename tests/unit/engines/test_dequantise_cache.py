"""The bundled model is de-quantised once per host: concurrent processes (Dask workers, test
processes) wait for the one doing it instead of each repeating ~30 s of work."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from synthgen.engines import transformers as tx


def _fake_dequantise(directory: Path, gguf: str, src: Path, target: Path) -> Path:
    """Stands in for the real de-quantisation: slow, and leaves a trace of each call."""
    with open(target.parent / "calls.log", "a") as log:
        log.write(f"{multiprocessing.current_process().pid}\n")
    time.sleep(1.0)  # long enough that every process reaches the lock while this one works
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir()
    (tmp / ".complete").write_text(f"{src}\n")
    tmp.rename(target)
    return target


def _resolve(directory: str, gguf: str, out: str) -> None:
    Path(out).write_text(str(tx.dequantised_dir(Path(directory), gguf)))


def test_concurrent_processes_dequantise_once_and_all_get_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src_dir = tmp_path / "model"
    src_dir.mkdir()
    (src_dir / "m.gguf").write_bytes(b"x" * 10)
    monkeypatch.setenv("SYNTHGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tx, "_dequantise", _fake_dequantise)
    ctx = multiprocessing.get_context("fork")  # the children keep the stand-in
    outs = [tmp_path / f"out-{i}.txt" for i in range(3)]
    procs = [ctx.Process(target=_resolve, args=(str(src_dir), "m.gguf", str(out))) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    target = tmp_path / "cache" / "models" / "m-10"
    assert (target / ".complete").is_file()
    assert [out.read_text() for out in outs] == [str(target)] * 3
    calls = (tmp_path / "cache" / "models" / "calls.log").read_text().split()
    assert len(calls) == 1, calls  # one process did the work, the other two waited for it
