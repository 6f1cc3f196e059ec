"""The engine cache's one extension point (`set_engine_wrapper`), and the test-only engine
behaviours that use it from `tests/support/` (a hang, a cheat): none of them is in the package
or the run schema."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import click
import pytest

from synthgen.config import ModelConfig, SamplingConfig, config_from_dict
from synthgen.engines import cache
from synthgen.engines.base import GenRequest, ScoringEngine
from synthgen.engines.fake import FakeEngine
from synthgen.errors import ConfigError
from tests.helpers import fake_config
from tests.support import hang

REPO = Path(__file__).resolve().parents[3]
MSGS = [{"role": "user", "content": "hi"}]


def _requests(*ids: str) -> list[GenRequest]:
    return [GenRequest(p, MSGS, i) for i, p in enumerate(ids)]


class _Tagged:
    def __init__(self, inner, tag: str) -> None:
        self.inner, self.tag, self.info = inner, tag, inner.info

    def generate(self, requests, sampling, guided=None):
        return self.inner.generate(requests, sampling, guided)

    def close(self) -> None:
        self.inner.close()


def test_wrapper_applies_to_engines_built_after_it_until_removed():
    cfg = ModelConfig(engine="fake", path="wrapper-test")
    try:
        before = cache.get_engine(cfg)
        assert isinstance(before, FakeEngine)
        cache.set_engine_wrapper(lambda e: _Tagged(e, "a"))
        first = cache.get_engine(cfg)  # the cache was cleared: a new, wrapped engine
        assert isinstance(first, _Tagged) and first.tag == "a" and first.inner is not before
        assert cache.get_engine(cfg) is first  # still built once per process
        cache.set_engine_wrapper(lambda e: _Tagged(e, "b"))  # replaces, does not stack
        second = cache.get_engine(cfg)
        assert isinstance(second, _Tagged) and second.tag == "b"
        assert isinstance(second.inner, FakeEngine)
    finally:
        cache.set_engine_wrapper(None)
    assert isinstance(cache.get_engine(cfg), FakeEngine)


def test_hang_blocks_the_first_call_with_its_prompt_once_then_runs_normally(tmp_path):
    inner = FakeEngine(ModelConfig(engine="fake"))
    stuck = hang.Hang(tmp_path / "h", "p3")
    engine = hang.HangingEngine(inner, stuck)
    assert isinstance(engine, ScoringEngine) and engine.info is inner.info
    sampling = SamplingConfig()
    # calls without the prompt never claim the hang
    assert len(engine.generate(_requests("p0", "p1"), sampling)) == 2
    assert stuck.started() is None
    results: list = []
    first = threading.Thread(
        target=lambda: results.append(engine.generate(_requests("p2", "p3"), sampling))
    )
    first.start()
    try:
        info = stuck.wait_started()
        assert info["prompt_ids"] == ["p2", "p3"]
        # a second call with the prompt (a re-run, in any process) is not held
        again = hang.HangingEngine(FakeEngine(ModelConfig(engine="fake")), stuck)
        rerun = again.generate(_requests("p2", "p3"), sampling)
        assert not stuck.returned() and results == []  # the first call is still blocked
    finally:
        stuck.release()
    first.join()
    assert stuck.returned()
    assert [c.text for c in results[0]] == [c.text for c in rerun]  # then it ran normally


def test_hang_preload_hook_installs_the_wrapper_with_its_options(tmp_path):
    argv = hang.preload_argv("p-x", tmp_path / "h", 7.5)
    assert hang.preload_config("p-x", tmp_path / "h", 7.5) == {
        "distributed.worker.preload": ["tests.support.hang"],
        "distributed.worker.preload-argv": argv,
    }
    # the click-configurable Dask preload hook, as `dask worker --preload-argv` calls it
    ctx = hang.dask_setup.make_context("dask_setup", argv)
    try:
        hang.dask_setup.callback(object(), **ctx.params)
        engine = cache.get_engine(ModelConfig(engine="fake", path="preload-test"))
        assert isinstance(engine, hang.HangingEngine)
        assert engine.hang == hang.Hang(tmp_path / "h", "p-x", 7.5)
    finally:
        hang.uninstall()
    with pytest.raises(click.MissingParameter, match="prompt_id"):
        hang.dask_setup.make_context("dask_setup", [f"--state-dir={tmp_path}"])


def test_first_prompt_id_names_a_prompt_of_the_chosen_shard(tmp_path):
    from synthgen.io.store import Store
    from synthgen.stages.plan import read_shard_prompts, write_plan

    cfg = config_from_dict(fake_config(str(tmp_path / "out")))
    store = Store(cfg.output)
    write_plan(cfg, store)
    for sid in ("shard-00000", "shard-00002"):
        prompts = read_shard_prompts(store, cfg.run_id or "", sid)
        assert hang.first_prompt_id(cfg, sid) == prompts[0].prompt_id
    with pytest.raises(ValueError, match="shard-99999"):
        hang.first_prompt_id(cfg, "shard-99999")


@pytest.mark.parametrize("key", ["hang_shards", "hang_seconds"])
def test_the_run_schema_has_no_hang_hook(tmp_path, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(fake_config(str(tmp_path), **{f"model__fake__{key}": 1}))


def test_the_package_holds_no_test_hooks():
    """synthgen/ and flows/ never import tests/, and the old hooks are gone from them."""
    offenders = []
    for root in ("synthgen", "flows"):
        for path in (REPO / root).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(text)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                offenders += [f"{path}: imports {n}" for n in names if n.split(".")[0] == "tests"]
            offenders += [
                f"{path}: {word}" for word in ("maybe_hang", "hang_shards") if word in text
            ]
    assert not (REPO / "synthgen" / "verify" / "cheats.py").exists()
    assert offenders == []
