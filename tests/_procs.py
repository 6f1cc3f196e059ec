"""Real server processes for infra tests: start, wait for readiness, and always clean up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from synthgen.cluster.client import security_from_config
from synthgen.config import ClusterConfig

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this worktree importable, the venv's tools first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.pop("SYNTHGEN_ENV_FILE", None)
    env.update(extra)
    return env


class Proc:
    """A child process in its own session (so the whole tree can be signalled), logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left."""
        pgid = self.popen.pid
        if self.alive():
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # children (nannies' workers) may outlive the leader
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)
        self._log.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, procs: list[Proc] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(
                    f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n{p.log()}"
                )
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in procs)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def make_certs(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA / "make-certs.sh"), *args, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_prefect_server(tmp: Path) -> tuple[Proc, str]:
    """`prefect server start` (SQLite in tmp) through infra/start-prefect-server.sh."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = child_env(
        PREFECT_HOME=str(tmp / "prefect-server-home"),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=url,
        SYNTHGEN_PREFECT_BIN=str(VENV_BIN / "prefect"),
    )
    proc = Proc("prefect-server", ["bash", str(INFRA / "start-prefect-server.sh")], env, tmp)

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"true"

    try:
        wait_until(healthy, 120, "prefect server /api/health", [proc])
    except BaseException:
        proc.stop()
        raise
    return proc, url


TEST_GPU_RESOURCE = "TESTGPU"  # the GPU resource the infra scripts' test workers advertise


@dataclass
class TLSClientSide:
    """The flow's side of a TLS cluster started by the infra scripts: its `cluster:` config
    (the client certificate from `make_certs`) and a Dask client made from it."""

    address: str
    certs: Path

    def cluster_cfg(self, **extra: object) -> dict[str, object]:
        return {
            "address": self.address,
            "tls": {
                "ca_file": str(self.certs / "ca.pem"),
                "cert_file": str(self.certs / "client.pem"),
                "key_file": str(self.certs / "client-key.pem"),
            },
            "gpu_resource": TEST_GPU_RESOURCE,
            **extra,
        }

    def client(self) -> Client:
        sec = security_from_config(ClusterConfig.model_validate(self.cluster_cfg()))
        return Client(self.address, security=sec, timeout=20)
