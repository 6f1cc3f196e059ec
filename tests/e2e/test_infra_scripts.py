"""infra/ scripts and units: certificates, refusal of unsafe settings, unit files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._procs import INFRA, REPO, child_env, make_certs


def _x509(cert: Path, *args: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def _verify(ca: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose, str(cert)],
        capture_output=True,
        text=True,
    )


def test_make_certs_creates_ca_and_role_certs(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    done = make_certs(out)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {
        "ca.pem",
        "ca-key.pem",
        "scheduler.pem",
        "scheduler-key.pem",
        "worker.pem",
        "worker-key.pem",
        "client.pem",
        "client-key.pem",
    }
    assert out.stat().st_mode & 0o777 == 0o700
    for key in out.glob("*-key.pem"):
        assert key.stat().st_mode & 0o077 == 0, f"{key} readable by others"
    ca = out / "ca.pem"
    # workers and scheduler both listen and dial: server + client auth; clients only dial
    for role in ("scheduler", "worker"):
        assert _verify(ca, out / f"{role}.pem", "sslserver").returncode == 0
        assert _verify(ca, out / f"{role}.pem", "sslclient").returncode == 0
        san = _x509(out / f"{role}.pem", "-ext", "subjectAltName")
        assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san
    assert _verify(ca, out / "client.pem", "sslclient").returncode == 0
    assert _verify(ca, out / "client.pem", "sslserver").returncode != 0


def test_make_certs_custom_san_issue_and_no_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert make_certs(out, "--san", "IP:203.0.113.7,DNS:sched.example.org").returncode == 0
    san = _x509(out / "scheduler.pem", "-ext", "subjectAltName")
    assert "IP Address:203.0.113.7" in san and "DNS:sched.example.org" in san
    before = (out / "ca.pem").read_bytes()
    again = make_certs(out)
    assert again.returncode == 1 and "exists (use --force" in again.stderr
    assert (out / "ca.pem").read_bytes() == before
    extra = make_certs(out, "--issue", "worker", "gpu-host-2", "--san", "IP:198.51.100.23")
    assert extra.returncode == 0, extra.stderr
    assert _verify(out / "ca.pem", out / "gpu-host-2.pem", "sslserver").returncode == 0
    assert "198.51.100.23" in _x509(out / "gpu-host-2.pem", "-ext", "subjectAltName")
    assert make_certs(out, "--force").returncode == 0
    assert (out / "ca.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--san", "bogus"], "--san must look like"),
        (["--days", "0"], "--days must be a positive integer"),
        (["--issue", "admin", "x"], "role must be scheduler, worker or client"),
        (["--wat"], "unknown option --wat"),
    ],
)
def test_make_certs_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    if args[0] == "--issue":
        assert make_certs(tmp_path / "tls").returncode == 0
    done = make_certs(tmp_path / "tls", *args)
    assert done.returncode != 0
    assert message in done.stderr


def _run_script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INFRA / name), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(**env),
    )


@pytest.mark.parametrize("script", ["start-gpu-workers.sh", "start-cpu-worker.sh"])
def test_worker_scripts_refuse_non_tls_scheduler(tmp_path: Path, script: str) -> None:
    done = _run_script(
        script, {"SYNTHGEN_SCHEDULER_ADDRESS": "tcp://10.0.0.5:8786", "SYNTHGEN_GPUS": "0"}
    )
    assert done.returncode != 0
    assert "must start with tls://" in done.stderr
    unset = _run_script(script, {"SYNTHGEN_SCHEDULER_ADDRESS": "", "SYNTHGEN_GPUS": "0"})
    assert "SYNTHGEN_SCHEDULER_ADDRESS is not set" in unset.stderr


def test_start_scripts_name_missing_certificates(tmp_path: Path) -> None:
    done = _run_script("start-scheduler.sh", {"SYNTHGEN_TLS_DIR": str(tmp_path / "none")})
    assert done.returncode != 0
    assert f"{tmp_path / 'none'}/ca.pem is missing" in done.stderr


def test_gpu_worker_script_builds_one_pinned_worker_per_gpu(tmp_path: Path) -> None:
    """Run the script with a stand-in `dask` that records its argv and environment."""
    out = make_certs(tmp_path / "tls")
    assert out.returncode == 0
    fake = tmp_path / "dask"
    record = tmp_path / "calls"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "CUDA=$CUDA_VISIBLE_DEVICES TYPE=$SYNTHGEN_GPU_TYPE ARGS=$*" >> {record}\n'
        "sleep 2\n"
    )
    fake.chmod(0o755)
    done = _run_script(
        "start-gpu-workers.sh",
        {
            "SYNTHGEN_SCHEDULER_ADDRESS": "tls://sched.example.org:8786",
            "SYNTHGEN_TLS_DIR": str(tmp_path / "tls"),
            "SYNTHGEN_DASK_BIN": str(fake),
            "SYNTHGEN_GPUS": "0,2",
            "SYNTHGEN_GPU_TYPE": "RTX 4090",
            "SYNTHGEN_WORKER_NAME": "box",
            "SYNTHGEN_WORKER_PORT_BASE": "9000",
        },
    )
    # the stand-in exits after 2 s, which the script reports as a worker exiting
    assert "a GPU worker exited with status 0" in done.stderr
    calls = sorted(record.read_text().splitlines())
    assert len(calls) == 2
    for gpu, line in zip(("0", "2"), calls, strict=True):
        assert line.startswith(f"CUDA={gpu} TYPE=RTX 4090 ARGS=worker tls://sched.example.org:8786")
        assert f"--name box-gpu{gpu}" in line
        assert "--nthreads 2" in line and "--resources GPU=1" in line
        assert "--dashboard-address 127.0.0.1:0" in line
        assert f"--worker-port {9000 + int(gpu)}" in line
        assert f"--tls-cert {tmp_path / 'tls'}/worker.pem" in line
    bad = _run_script(
        "start-gpu-workers.sh",
        {
            "SYNTHGEN_SCHEDULER_ADDRESS": "tls://s:1",
            "SYNTHGEN_GPUS": "0,x",
            "SYNTHGEN_TLS_DIR": str(tmp_path / "tls"),
        },
    )
    assert "GPU index 'x' is not a number" in bad.stderr


def test_serve_script_refuses_without_prefect_api_url(tmp_path: Path) -> None:
    done = _run_script("start-serve.sh", {"PREFECT_API_URL": "", "SYNTHGEN_CONFIGS": "x.yaml"})
    assert done.returncode != 0
    assert "PREFECT_API_URL is not set" in done.stderr


UNITS = sorted((INFRA / "systemd").glob("*.service"))


def test_every_unit_starts_an_existing_executable_script() -> None:
    assert {u.name for u in UNITS} == {
        "synthgen-dask-scheduler.service",
        "synthgen-gpu-worker@.service",
        "synthgen-cpu-worker.service",
        "synthgen-prefect-server.service",
        "synthgen-serve.service",
    }
    for unit in UNITS:
        text = unit.read_text()
        exec_start = re.search(r"^ExecStart=/opt/synthgen/(\S+)", text, re.M)
        assert exec_start, f"{unit.name}: no ExecStart under /opt/synthgen"
        script = REPO / exec_start.group(1)
        assert script.is_file() and script.stat().st_mode & 0o111, f"{unit.name}: {script}"
        assert "EnvironmentFile=/etc/synthgen/synthgen.env" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # the only complaint allowed is that /opt/synthgen is not installed on this machine
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "/opt/synthgen/infra/" not in line
    ]
    assert problems == []


def test_env_example_covers_every_variable_the_scripts_read() -> None:
    example = (INFRA / ".env.example").read_text()
    used: set[str] = set()
    for script in INFRA.glob("*.sh"):
        used |= set(re.findall(r"\$\{?(SYNTHGEN_[A-Z_]+)", script.read_text()))
    internal = {
        "SYNTHGEN_ENV_FILE",
        "SYNTHGEN_DASK_BIN",
        "SYNTHGEN_PREFECT_BIN",
        "SYNTHGEN_BIN",
        "SYNTHGEN_TLS_CERT",
        "SYNTHGEN_TLS_KEY",
        "SYNTHGEN_WORKER_NAME",
        "SYNTHGEN_WORKER_DIR",
    }
    missing = sorted(v for v in used - internal if v not in example)
    assert missing == []


def test_scripts_read_the_env_file_named_by_synthgen_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "synthgen.env"
    env_file.write_text(
        'SYNTHGEN_SCHEDULER_ADDRESS=tcp://10.9.8.7:8786\nSYNTHGEN_GPU_TYPE="RTX 4090"\n'
    )
    done = _run_script(
        "start-gpu-workers.sh", {"SYNTHGEN_ENV_FILE": str(env_file), "SYNTHGEN_GPUS": "0"}
    )
    assert "SYNTHGEN_SCHEDULER_ADDRESS=tcp://10.9.8.7:8786 must start with tls://" in done.stderr
    missing = _run_script("start-scheduler.sh", {"SYNTHGEN_ENV_FILE": str(tmp_path / "nope.env")})
    assert missing.returncode != 0 and "nope.env not found" in missing.stderr
