"""A partitioned host with default settings: one `dask worker` runs in a network namespace
joined to the host by a veth pair, and the link is cut (`ip link set VETH down`) while that
worker is mid-shard. Unlike SIGSTOP (tests/e2e/test_crash_frozen.py) the worker process keeps
running: it only loses its network, as a rented host does. Packets are dropped, no TCP
connection is reset, so the scheduler hears nothing and Dask alone waits for its worker TTL.

What the cut worker loses, and why:
- the scheduler: it listens on the host's veth address; the other worker and the CLI (on the
  host) reach that address locally whatever the link does;
- storage: the output is on S3 (a moto server on the host's veth address), not on a local
  directory: a local directory is no network, and the cut worker would simply commit its
  shard during the partition. Here it cannot finish its attempt until the link is back;
- the Prefect API: a worker runs each task through Prefect's task engine, which checks the
  API before it runs the task (on an unreachable API the task fails at once: "Failed to
  reach API"), at the URL in the Settings the flow ships with every task
  (flows/_fast_context.py), i.e. the flow's own PREFECT_API_URL, not the worker's. The
  session's server listens on host loopback, which the namespace cannot reach, so the CLI
  is given the URL of a relay on the host's veth address (`Relay`, to that server): both
  workers reach the API there, the cut one only while the link is up.

No `cluster.shard_timeout_s`, default deadline settings but the floor (6 s instead of 60 s, as
in the frozen test, for a test of 1 s shards): the shard's derived deadline moves it to the other worker, the
cut worker (silent to the scheduler) is removed from the cluster, and the run completes long
before Dask's worker TTL; the cut attempt is on the ledger as lost. Bringing the link back up
afterwards (the late attempt reconnects to storage and the scheduler) changes no file.

Needs root and `ip netns` (a skip says which is missing). Only loopback and the namespace this
test creates carry its traffic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pyarrow.dataset as ds
import pytest
import s3fs

from synthgen.config import config_from_dict
from synthgen.io.store import Store
from tests.conftest import free_port
from tests.crash_helpers import check_routed_around, fresh_attempt, start_cli, start_dask, wait_for
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    """Why this machine cannot make a network namespace for the test, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    try:
        probe = _ip("netns", "list", check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns list` failed: {exc}"
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


@dataclass
class Partition:
    """A network namespace joined to the host by a veth pair: host side `host_ip` on
    `host_if`, namespace side `ns_ip`, in a private /30."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @property
    def prefix(self) -> list[str]:
        """A command prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        """Delete the namespace and the veth pair (either may be gone already)."""
        _ip("netns", "delete", self.ns, check=False)
        _ip("link", "delete", self.host_if, check=False)

    def exists(self) -> list[str]:
        left = []
        if self.ns in _ip("netns", "list", check=False).stdout.split():
            left.append(f"netns {self.ns}")
        if _ip("link", "show", self.host_if, check=False).returncode == 0:
            left.append(f"link {self.host_if}")
        return left


def make_partition() -> Partition:
    """A fresh namespace and veth pair, names and /30 derived from this process's id (and a
    random part: a re-run in the same process gets new ones)."""
    tag = f"{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"  # interface names: <= 15 chars
    n = os.getpid() % 16384
    net = f"10.231.{n // 64}.{(n % 64) * 4}"
    base = net.rsplit(".", 1)[0]
    last = int(net.rsplit(".", 1)[1])
    p = Partition(
        ns=f"sgpart{tag}",
        host_if=f"sgh{tag}",
        ns_if=f"sgn{tag}",
        host_ip=f"{base}.{last + 1}",
        ns_ip=f"{base}.{last + 2}",
    )
    try:
        _ip("netns", "add", p.ns)
        _ip("link", "add", p.host_if, "type", "veth", "peer", "name", p.ns_if)
        _ip("link", "set", p.ns_if, "netns", p.ns)
        _ip("addr", "add", f"{p.host_ip}/30", "dev", p.host_if)
        _ip("link", "set", p.host_if, "up")
        _ip("-n", p.ns, "addr", "add", f"{p.ns_ip}/30", "dev", p.ns_if)
        _ip("-n", p.ns, "link", "set", p.ns_if, "up")
        _ip("-n", p.ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        p.remove()
        raise RuntimeError(f"could not set up the namespace: {exc.cmd}: {exc.stderr}") from exc
    return p


@pytest.fixture()
def partition() -> Iterator[Partition]:
    reason = netns_unavailable()
    if reason:
        print(f"SKIP test_crash_partition: {reason}")
        pytest.skip(reason)
    p = make_partition()
    try:
        yield p
    finally:
        p.remove()
        assert not p.exists(), f"left behind: {p.exists()}"


@pytest.fixture()
def s3_on_veth(partition: Partition) -> Iterator[str]:
    """A live S3 endpoint on the host side of the veth pair: the host's processes reach it
    locally, the namespace's only while the link is up."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=partition.host_ip, port=port)
    server.start()
    try:
        yield f"http://{partition.host_ip}:{port}"
    finally:
        server.stop()


class Relay:
    """A TCP relay: connections to (`host`, `self.port`) are joined to `target`."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server((host, 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                up = socket.create_connection(self.target, timeout=10)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            self.conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.server.close()
        for s in self.conns:
            s.close()


@pytest.fixture()
def api_on_veth(partition: Partition, prefect_api: str) -> Iterator[str]:
    """The session's Prefect API, reachable on the host side of the veth pair."""
    url = urlsplit(prefect_api)
    relay = Relay(partition.host_ip, (url.hostname or "127.0.0.1", url.port or 80))
    try:
        yield f"http://{partition.host_ip}:{relay.port}{url.path}"
    finally:
        relay.close()


class S3Clients(logging.Handler):
    """The client address and time of every request moto's server logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((time.monotonic(), record.getMessage().split(" ", 1)[0]))

    def since(self, t: float, client: str) -> int:
        return sum(1 for at, who in self.seen if at >= t and who == client)


def _tree(fs: s3fs.S3FileSystem, root: str) -> dict[str, str]:
    """key -> sha256 of every object under `root` (what a reconnect must not change)."""
    fs.invalidate_cache()
    return {
        key: hashlib.sha256(fs.cat_file(key)).hexdigest()
        for key in sorted(fs.find(root, withdirs=False))
    }


def test_a_partitioned_worker_is_routed_around_by_default(
    tmp_path, partition, s3_on_veth, api_on_veth
):
    here = partition.host_ip
    procs = start_dask(
        tmp_path, host=here, workers=[(here, ()), (partition.ns_ip, partition.prefix)]
    )
    clients = S3Clients()
    moto_log = logging.getLogger("werkzeug")  # moto's server logs each request there
    level = moto_log.level
    moto_log.setLevel(logging.INFO)
    moto_log.addHandler(clients)
    try:
        _partitioned_run(tmp_path, procs, partition, s3_on_veth, api_on_veth, clients)
    finally:
        moto_log.removeHandler(clients)
        moto_log.setLevel(level)
        procs.stop()
        # the log, for a failure's report
        sys.stdout.write((tmp_path / "dask.log").read_text(errors="replace")[-3000:])


def _partitioned_run(tmp_path, procs, partition, endpoint, api, clients):
    cut_worker = next(w for w in procs.workers if partition.ns_ip in w)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    bucket = f"part-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    root = f"{bucket}/out"
    data = fake_config(
        f"s3://{root}",
        output__storage_options={"endpoint_url": endpoint},
        shards__size=3,  # 8 shards of about 1 s
        cluster__address=procs.address,
        cluster__allow_insecure=True,  # plain tcp:// on the test's own private /30
        model__fake__seconds_per_shard=1.0,
        # as in test_crash_frozen: the default floor (60 s) is for real runs; 6 s is far
        # above a 1 s shard even on a loaded CI machine
        cluster__deadline_floor_s=6,
    )
    cfg = config_from_dict(data)
    assert cfg.cluster.shard_timeout_s is None and cfg.cluster.deadlines
    store = Store(cfg.output)
    summary_path = tmp_path / "s.json"
    cli = start_cli(
        write_config(tmp_path / "c.yaml", data), summary_path, tmp_path / "log", PREFECT_API_URL=api
    )

    victim: dict = {}

    def cut_mid_shard() -> bool:
        a = fresh_attempt(store, cfg.run_id, [cut_worker])
        if a is None:
            return False
        age = (datetime.now(UTC) - datetime.fromisoformat(a["started_at"])).total_seconds()
        if age >= 0.7:  # the listing was slow: the shard may be done by now; wait for another
            return False
        partition.cut()
        victim.update(a)
        return True

    try:
        wait_for(cut_mid_shard, 120, "a shard mid-run on the namespaced worker")
        code = cli.wait(timeout=240)  # Dask alone would wait for its 5-minute worker TTL
    except BaseException:
        cli.kill()
        raise
    log = (tmp_path / "log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert f"attempt {victim['attempt']} on {cut_worker} ran past its" in log, log[-3000:]
    assert f"worker {cut_worker} FLAGGED: missed a deadline and silent" in log, log[-3000:]

    table = ds.dataset(f"{root}/dataset/data", format="parquet", filesystem=fs).to_table()
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == 24 and len(set(ids)) == 24, "a prompt was lost or doubled"

    victim_rows = check_routed_around(store, cfg.run_id, victim, summary_path)
    late = json.loads(summary_path.read_text())["deadlines"]
    assert cut_worker in late["removed_workers"], late

    # the reconnect: the cut attempt reaches storage again, finds the shard committed by
    # the re-run and writes nothing (the ledger already has its row); its worker finds
    # itself removed from the cluster
    before = _tree(fs, root)
    healed = time.monotonic()
    partition.heal()
    # the cut attempt kept retrying storage (the worker logs EndpointConnectionError): it
    # is heard from again, so the reconnect below is one that happened
    wait_for(
        lambda: clients.since(healed, partition.ns_ip) > 0,
        90,
        "the cut worker to reach storage again",
    )
    last = {"tree": before, "since": time.monotonic()}

    def settled() -> bool:
        tree = _tree(fs, root)
        if tree != last["tree"]:
            last.update(tree=tree, since=time.monotonic())
        return time.monotonic() - last["since"] >= 5.0  # a shard is 1 s: long done

    wait_for(settled, 90, "the reconnected worker to settle", every=0.5)
    assert _tree(fs, root) == before, "the reconnected attempt changed the run's files"
    assert [r["status"] for r in victim_rows()] == ["lost"]
