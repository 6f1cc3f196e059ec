"""The embedded cluster starts before the flow run and its workers warm up (flows/warm.py):
on a real LocalCluster, a joining worker has imported the units' code, opened the output
store and loaded the run's model before its first unit; a warm-up that fails leaves a
working worker; an external cluster's runner kwargs pass through untouched."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client

from flows.warm import PLUGIN_NAME, WarmPlugin, embedded_cluster, warm_model
from synthgen.cluster.client import task_runner_kwargs
from synthgen.config import RunConfig
from tests.helpers import fake_config

REPO = Path(__file__).resolve().parents[3]


def _state() -> dict:
    from synthgen.engines import cache

    return {
        "flows.units": "flows.units" in sys.modules,
        "loads": [load["engine"] for load in cache.stats()["loads"]],
    }


def _wait_warm(client: Client, want: dict, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = client.run(_state)
        if all(s == want for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_embedded_workers_warm_up_before_any_unit(tmp_path) -> None:
    cfg = RunConfig.model_validate(
        fake_config(str(tmp_path / "out"), cluster__n_workers=2, cluster__threads_per_worker=1)
    )
    kwargs = task_runner_kwargs(cfg.cluster)
    kwargs["cluster_kwargs"] = {**kwargs["cluster_kwargs"], "dashboard_address": None}
    with embedded_cluster(cfg, kwargs) as runner_kwargs:
        assert set(runner_kwargs) == {"address"}  # the runner connects; it starts nothing
        with Client(runner_kwargs["address"]) as client:
            states = _wait_warm(client, {"flows.units": True, "loads": ["fake"]})
            assert len(states) == 2
            assert all(s == {"flows.units": True, "loads": ["fake"]} for s in states.values())

            # the first unit finds the engine loaded: no second load
            def load_again(model: dict) -> int:
                from synthgen.config import ModelConfig
                from synthgen.engines import cache
                from synthgen.engines.cache import get_engine

                get_engine(ModelConfig.model_validate(model))
                return len(cache.stats()["loads"])

            model = cfg.model.model_dump(mode="json")
            assert client.submit(load_again, model, pure=False).result() == 1
        address = runner_kwargs["address"]
    with pytest.raises(OSError):  # closed with the block
        Client(address, timeout="2s")


def test_a_failing_warm_up_leaves_a_working_worker(tmp_path) -> None:
    cfg = RunConfig.model_validate(
        fake_config(
            str(tmp_path / "out"),
            cluster__n_workers=1,
            model={"engine": "transformers", "path": str(tmp_path / "no-such-model")},
        )
    )
    kwargs = task_runner_kwargs(cfg.cluster)
    kwargs["cluster_kwargs"] = {**kwargs["cluster_kwargs"], "dashboard_address": None}
    with embedded_cluster(cfg, kwargs) as runner_kwargs, Client(runner_kwargs["address"]) as c:
        states = _wait_warm(c, {"flows.units": True, "loads": []}, timeout=30)
        assert all(s == {"flows.units": True, "loads": []} for s in states.values())
        assert c.submit(lambda: 41 + 1, pure=False).result() == 42


def test_external_clusters_and_multi_model_runs_are_not_warmed_here(tmp_path) -> None:
    cfg = RunConfig.model_validate(fake_config(str(tmp_path / "out")))
    external = {"address": "tls://scheduler:8786"}
    with embedded_cluster(cfg, external) as kwargs:
        assert kwargs is external
    assert warm_model(cfg) == cfg.model.model_dump(mode="json")
    stages = [{"name": "a", "prompt": "{{ prompt }}"}, {"name": "b", "prompt": "{{ a }}"}]
    same = RunConfig.model_validate(fake_config(str(tmp_path / "out"), stages=stages))
    assert warm_model(same) == same.model.model_dump(mode="json")  # one model for both
    stages[1]["model"] = {"engine": "fake", "fake": {"tokens_per_completion": 3}}
    other = RunConfig.model_validate(fake_config(str(tmp_path / "out"), stages=stages))
    assert warm_model(other) is None  # a worker may never run the other stage's units
    plugin = WarmPlugin({"uri": str(tmp_path)}, None)
    assert plugin.idempotent and PLUGIN_NAME == "synthgen-warm"


def test_the_plugins_module_imports_nothing_a_worker_has_not_loaded() -> None:
    """`register_plugin` waits for every worker to unpickle the plugin, which imports its
    module on the worker's event loop: the units' code (pyarrow, s3fs, synthgen's store and
    engines) must load in the warm-up's thread, not there; and that code (`flows.units`)
    does not import Prefect (2.2 s of a worker's start)."""
    code = (
        "import sys, distributed, pickle\n"
        "before = set(sys.modules)\n"
        "from flows.warm import WarmPlugin\n"  # the flow's side: heavy, and fine
        "blob = pickle.dumps(WarmPlugin({'uri': '/tmp/x'}, None))\n"
        "for m in [m for m in sys.modules if m not in before]: del sys.modules[m]\n"
        "before = set(sys.modules)\n"
        "pickle.loads(blob)\n"  # the worker's side
        "print(sorted(m for m in set(sys.modules) - before if '.' not in m))\n"
        "import flows.units\n"  # what the warm-up and every unit import
        "print('prefect' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    *_, loaded, prefect = out.strip().splitlines()
    assert ast.literal_eval(loaded) == ["flows"], loaded  # flows.warm_plugin, nothing else
    assert prefect == "False"  # the units' code runs on workers without Prefect
