"""The operator's per-worker prices (`cost.worker_prices`, issue 17 item 4): a lease names a
worker by its TLS certificate or its name; the host's own environment changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from distributed.security import Security

from synthgen.config import CostConfig, config_from_dict
from synthgen.cost import leases
from synthgen.cost.leases import (
    IGNORED_PRICE_ENV,
    Lease,
    WorkerIdentity,
    certificate_cn,
    identity_of,
    match_lease,
    worker_lease,
)
from synthgen.cost.meter import worker_price
from synthgen.errors import ConfigError
from tests._procs import make_certs

RTX = "NVIDIA GeForce RTX 4090"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lease-certs")
    for args in ((), ("--issue", "worker", "host7")):
        done = make_certs(out, *args)
        assert done.returncode == 0, done.stderr
    return out


def _worker(cert: str | None, name: str | None) -> SimpleNamespace:
    """A stand-in for distributed's Worker: the two attributes leases read."""
    security = Security(tls_worker_cert=cert) if cert else Security()
    return SimpleNamespace(security=security, name=name)


def test_certificate_cn_of_infra_certificates(certs: Path) -> None:
    assert certificate_cn(str(certs / "host7.pem")) == "synthgen-host7"
    assert certificate_cn(str(certs / "worker.pem")) == "synthgen-worker"
    # distributed's Security may hold the PEM text itself instead of a path
    assert certificate_cn((certs / "host7.pem").read_text()) == "synthgen-host7"
    assert certificate_cn(str(certs / "missing.pem")) is None
    assert identity_of(_worker(str(certs / "host7.pem"), "box-gpu0")) == WorkerIdentity(
        "synthgen-host7", "box-gpu0"
    )
    assert identity_of(_worker(None, "box-gpu0")) == WorkerIdentity(None, "box-gpu0")


@pytest.mark.parametrize("key", ["host7", "synthgen-host7"])
def test_lease_by_certificate_with_or_without_prefix(certs: Path, key: str) -> None:
    who = identity_of(_worker(str(certs / "host7.pem"), "whatever-gpu0"))
    assert match_lease({"other": 1.0, key: 0.42}, who) == Lease(key, 0.42, "certificate")
    # another host's certificate is not this lease
    other = identity_of(_worker(str(certs / "worker.pem"), "whatever-gpu0"))
    assert match_lease({key: 0.42}, other) is None


def test_certificate_beats_name(certs: Path) -> None:
    # a host that names itself after a pricier lease still pays its certificate's
    who = identity_of(_worker(str(certs / "host7.pem"), "pricey-gpu0"))
    prices = {"pricey": 3.0, "host7": 0.42}
    assert match_lease(prices, who) == Lease("host7", 0.42, "certificate")
    # with no lease for its certificate, the name is all there is
    assert match_lease({"pricey": 3.0}, who) == Lease("pricey", 3.0, "name")


def test_lease_by_worker_name_exact_or_infra_prefix() -> None:
    prices = {"host1": 0.5, "host1-gpu1": 0.9, "cpu-box": 0.1}

    def by_name(name: str) -> Lease | None:
        return match_lease(prices, WorkerIdentity(None, name))

    assert by_name("host1") == Lease("host1", 0.5, "name")
    assert by_name("host1-gpu0") == Lease("host1", 0.5, "name")  # start-gpu-workers.sh
    assert by_name("host1-gpu12") == Lease("host1", 0.5, "name")
    assert by_name("host1-cpu") == Lease("host1", 0.5, "name")  # start-cpu-worker.sh
    assert by_name("host1-gpu1") == Lease("host1-gpu1", 0.9, "name")  # exact beats prefix
    assert by_name("cpu-box") == Lease("cpu-box", 0.1, "name")
    # never an arbitrary prefix
    for name in ("host10-gpu0", "host1-gpu", "host1-gpu0x", "host1-extra", "xhost1-gpu0"):
        assert by_name(name) is None, name


def test_no_match_pays_the_table() -> None:
    cfg = config_from_dict({"cost": {"worker_prices": {"host7": 0.42}}})
    who = WorkerIdentity("synthgen-worker", "box-gpu0")
    lease = worker_lease(cfg.cost, who)
    assert lease is None
    assert match_lease({}, who) is None
    # outside a Dask worker (here) there is no identity: the table
    assert worker_lease(cfg.cost) is None
    price = worker_price(cfg, RTX)
    assert (price.per_hour, price.source, price.device_type) == (0.35, "table", "RTX 4090")


def test_host_price_env_is_ignored_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(IGNORED_PRICE_ENV, "0.01")
    monkeypatch.setattr(leases, "_WARNED", type(leases._WARNED)())
    cfg = config_from_dict({})
    with caplog.at_level(logging.WARNING, logger="synthgen.cost.leases"):
        first = worker_price(cfg, RTX)
        worker_price(cfg, RTX)
    assert (first.per_hour, first.source) == (0.35, "table")
    warned = [r for r in caplog.records if IGNORED_PRICE_ENV in r.getMessage()]
    assert len(warned) == 1 and "ignored" in warned[0].getMessage()
    # and a lease is not lowered by it either
    leased = config_from_dict({"cost": {"worker_prices": {"box": 0.42}}})
    lease = worker_lease(leased.cost, WorkerIdentity(None, "box-gpu0"))
    assert lease == Lease("box", 0.42, "name")


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"host7": -0.1}, r"worker_prices\['host7'\].*finite and >= 0"),
        ({"host7": float("inf")}, r"worker_prices\['host7'\].*finite"),
        ({"host7": float("nan")}, r"worker_prices\['host7'\].*finite"),
        ({"host 7": 1.0}, r"worker_prices\['host 7'\].*certificate name"),
        ({"": 1.0}, r"worker_prices\[''\]"),
        ({"host7": 1.0, "synthgen-host7": 2.0}, r"same worker certificate \(CN synthgen-host7\)"),
    ],
)
def test_config_validates_worker_prices(prices: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"cost": {"worker_prices": prices}})


def test_config_takes_worker_prices_from_overrides() -> None:
    cfg = config_from_dict({}, ["cost.worker_prices.host7=0.42"])
    assert cfg.cost.worker_prices == {"host7": 0.42}
    assert CostConfig().worker_prices == {}
