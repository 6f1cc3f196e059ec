"""Cluster selection: transport policy, TLS Security from config, GPU resources (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.cluster.client import (
    generate_resources,
    security_from_config,
    task_runner_kwargs,
    unit_resources,
    worker_advertised,
)
from synthgen.config import ClusterConfig, TLSConfig, config_from_dict
from synthgen.config.transport import is_loopback_host, split_address, transport_problem
from synthgen.errors import ConfigError
from tests._procs import make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "tls"
    done = make_certs(out)
    assert done.returncode == 0, done.stderr
    return out


def _tls(certs: Path) -> dict[str, str]:
    return {
        "ca_file": str(certs / "ca.pem"),
        "cert_file": str(certs / "client.pem"),
        "key_file": str(certs / "client-key.pem"),
    }


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tls://10.0.0.5:8786", ("tls", "10.0.0.5")),
        ("10.0.0.5:8786", ("tcp", "10.0.0.5")),
        ("TCP://sched.example.org:8786", ("tcp", "sched.example.org")),
        ("tls://[::1]:8786", ("tls", "::1")),
        ("inproc://10.0.0.1/123/1", ("inproc", "10.0.0.1/123/1")),
    ],
)
def test_split_address(address: str, expected: tuple[str, str]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.5", False),
        ("0.0.0.0", False),
        ("sched.example.org", False),
        ("localhost.evil.example", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.5:8786", "10.0.0.5:8786", "ws://sched.example.org:8786"]
)
def test_plain_transport_to_remote_host_is_refused_at_load(address: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.yaml: cluster: .*allow_insecure"):
        config_from_dict({"cluster": {"address": address}}, source="run.yaml")


def test_plain_transport_to_remote_host_allowed_when_explicit() -> None:
    cfg = config_from_dict({"cluster": {"address": "tcp://10.0.0.5:8786", "allow_insecure": True}})
    assert task_runner_kwargs(cfg.cluster) == {"address": "tcp://10.0.0.5:8786"}


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://localhost:8786", "[::1]:8786"])
def test_plain_transport_to_loopback_is_fine(address: str) -> None:
    cfg = config_from_dict({"cluster": {"address": address}})
    assert task_runner_kwargs(cfg.cluster)["address"] == address


def test_override_cannot_sneak_past_transport_check() -> None:
    with pytest.raises(ConfigError, match="non-loopback"):
        config_from_dict({}, overrides=["cluster.address=tcp://203.0.113.9:8786"])


def test_tls_scheme_needs_tls_section_and_vice_versa(certs: Path) -> None:
    with pytest.raises(ConfigError, match=r"uses tls:// but cluster\.tls"):
        config_from_dict({"cluster": {"address": "tls://10.0.0.5:8786"}})
    with pytest.raises(ConfigError, match=r"plain tcp:// but cluster\.tls is set"):
        config_from_dict({"cluster": {"address": "tcp://127.0.0.1:8786", "tls": _tls(certs)}})
    with pytest.raises(ConfigError, match=r"cluster\.address is unset"):
        config_from_dict({"cluster": {"tls": _tls(certs)}})
    with pytest.raises(ConfigError, match="unsupported scheme 'ucx'"):
        config_from_dict({"cluster": {"address": "ucx://10.0.0.5:8786"}})


def test_transport_problem_is_pure_and_none_for_local_cluster() -> None:
    assert transport_problem(ClusterConfig()) is None


def test_security_from_config_uses_client_cert_and_requires_encryption(certs: Path) -> None:
    cfg = ClusterConfig(address="tls://sched.example.org:8786", tls=TLSConfig(**_tls(certs)))
    sec = security_from_config(cfg)
    assert sec is not None
    assert sec.require_encryption is True
    assert sec.tls_ca_file == str(certs / "ca.pem")
    assert sec.tls_client_cert == str(certs / "client.pem")
    assert sec.tls_client_key == str(certs / "client-key.pem")
    kwargs = task_runner_kwargs(cfg)
    assert kwargs["address"] == "tls://sched.example.org:8786"
    assert kwargs["client_kwargs"]["security"].tls_client_cert == str(certs / "client.pem")
    assert security_from_config(ClusterConfig()) is None


def test_security_errors_name_the_key_and_file(certs: Path, tmp_path: Path) -> None:
    tls = _tls(certs)
    missing = ClusterConfig(
        address="tls://h:1", tls=TLSConfig(**{**tls, "key_file": str(tmp_path / "nope.pem")})
    )
    with pytest.raises(ConfigError, match=r"cluster\.tls\.key_file: .*nope\.pem does not exist"):
        security_from_config(missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    bad = ClusterConfig(address="tls://h:1", tls=TLSConfig(**{**tls, "ca_file": str(junk)}))
    with pytest.raises(ConfigError, match=r"cluster\.tls\.ca_file: .*junk\.pem is not a PEM file"):
        task_runner_kwargs(bad)


def test_local_cluster_kwargs_unchanged() -> None:
    kwargs = task_runner_kwargs(ClusterConfig(n_workers=3))
    assert kwargs["cluster_class"] == "synthgen.cluster.client.local_cluster"
    assert kwargs["cluster_kwargs"]["n_workers"] == 3
    assert "address" not in kwargs


def test_generate_resources_follow_engine_and_override(certs: Path) -> None:
    remote = {"address": "tls://h:8786", "tls": _tls(certs), "gpu_resource": "GPU"}
    vllm = config_from_dict({"model": {"engine": "vllm"}, "cluster": remote})
    assert generate_resources(vllm) == {"GPU": 0.5}  # cluster.overlap 2: two shards per GPU
    solo = config_from_dict({"model": {"engine": "vllm"}, "cluster": {**remote, "overlap": 1}})
    assert generate_resources(solo) == {"GPU": 1.0}
    cuda = config_from_dict({"model": {"device": "cuda"}, "cluster": remote})
    assert generate_resources(cuda) == {"GPU": 0.5}
    cpu = config_from_dict({"model": {"engine": "fake"}, "cluster": remote})
    assert generate_resources(cpu) is None
    forced = config_from_dict(
        {"model": {"engine": "fake"}, "cluster": {**remote, "gpu_tasks": True, "gpu_resource": "A"}}
    )
    assert generate_resources(forced) == {"A": 0.5}
    off = config_from_dict({"model": {"engine": "vllm"}, "cluster": {**remote, "gpu_tasks": False}})
    assert generate_resources(off) is None
    # a LocalCluster advertises no resources: asking for one would hang forever
    local = config_from_dict({"model": {"engine": "vllm"}})
    assert generate_resources(local) is None


def test_gpu_resource_name_validated() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.gpu_resource"):
        config_from_dict({"cluster": {"gpu_resource": "GPU=1"}})


def test_worker_advertised_reads_start_script_environment_but_no_price() -> None:
    env = {"SYNTHGEN_GPU_TYPE": "NVIDIA GeForce RTX 4090", "SYNTHGEN_PRICE_PER_HOUR": "0.35"}
    # a worker does not advertise a price: it is the operator's (cost.worker_prices)
    assert worker_advertised(env) == {"gpu_type": "NVIDIA GeForce RTX 4090"}
    assert worker_advertised({"SYNTHGEN_PRICE_PER_HOUR": "cheap"}) == {}
    assert worker_advertised({}) == {}


def test_unit_resources_per_stage_explicit_then_the_stages_model(certs: Path) -> None:
    remote = {"address": "tls://h:8786", "tls": _tls(certs), "gpu_resource": "GPU"}
    cfg = config_from_dict(
        {
            "model": {"engine": "fake"},
            "cluster": remote,
            "stages": [
                {"name": "draft", "prompt": "{{ prompt }}"},
                {"name": "judge", "prompt": "{{ draft }}", "model": {"engine": "vllm"}},
                {"name": "polish", "prompt": "{{ draft }}", "resources": {"GPU_BIG": 2}},
            ],
        }
    )
    assert unit_resources(cfg, "draft:shard-00000") is None  # the run's fake model
    # its own model, a GPU one: a share of the GPU (cluster.overlap units per worker)
    assert cfg.cluster.overlap == 2
    assert unit_resources(cfg, "judge:shard-00000") == {"GPU": 0.5}
    assert unit_resources(cfg, "polish:shard-00003") == {"GPU_BIG": 2.0}  # declared
    assert unit_resources(cfg) is None  # the run's default


def test_stage_resources_are_checked_at_load_naming_the_stage() -> None:
    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\): resources .*\(cluster\.address\)"):
        config_from_dict({"stages": [{"name": "a", "prompt": "x", "resources": {"BIG": 1}}]})
    with pytest.raises(ConfigError, match=r"stages\.0: .*resources: 'BIG': 0\.0 \(.*positive"):
        config_from_dict(
            {
                "cluster": {"address": "tcp://127.0.0.1:8786"},
                "stages": [{"name": "a", "prompt": "x", "resources": {"BIG": 0}}],
            }
        )


def test_workers_info_asks_the_scheduler_not_the_clients_cached_identity() -> None:
    """The client's periodic refresh caches an identity without per-worker entries; a
    worker list read from that cache is empty (a shard once failed "no worker left")."""
    from distributed import Client, LocalCluster

    from flows.verify import cluster_workers
    from synthgen.cluster.client import workers_info

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.sync(client._update_scheduler_info)  # what the 2 s refresh does
        assert client._scheduler_identity["workers"] == {}  # the cache holds no workers
        assert len(workers_info(client)) == 2
        assert cluster_workers(client) == sorted(cluster.scheduler.workers)
