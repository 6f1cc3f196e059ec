"""Least privilege in storage (issue 17): what an untrusted worker may do with the bucket.

With `cluster.untrusted_workers` the workers hold no storage credentials. The trusted side
(the flow's process) hands each shard attempt a `Grant`: AWS SigV4 presigned URLs for the
objects the attempt reads (GET: its prompts, its upstream shard, the decontamination index)
and for the one key it writes (PUT: its staging key, `runs/RUN_ID/staging/SHARD.N.UID.parquet`).
A URL names one object and one method, and expires (`EXPIRES_S`): the worker cannot list,
delete, overwrite a committed shard, write into `dataset/` or read another run. The worker
reads and writes through a `GrantStore`, which offers the few `Store` operations a shard
attempt needs over plain HTTP(S) with those URLs; anything else raises `GrantRefused`.

The flow then checks the staged object and commits it itself (`synthgen.stages.commit`).
Works on any S3-compatible store that implements presigned URLs (S3, MinIO, moto).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

import botocore.session
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config

from synthgen.errors import StorageError
from synthgen.io.layout import RUNS_DIR
from synthgen.io.store import _storage_options

log = logging.getLogger(__name__)

EXPIRES_S = 6 * 3600  # a presigned URL's lifetime: longer than any shard attempt
HTTP_TIMEOUT_S = 120.0
HTTP_TRIES = 4


class GrantRefused(StorageError, PermissionError):
    """A shard attempt asked its `GrantStore` for something its grant does not allow."""


@dataclass
class Grant:
    """What one shard attempt may do: plain data, sent to the worker with its task.

    `root`: the store root the paths are under (so `RunLayout` gives the same paths on both
    sides); `get`/`put`: store path -> presigned URL; `staged`: the path it writes its output
    to; `expect`: store path -> {"sha256", "rows"} the worker checks what it reads against
    (an upstream shard, as its commit marker says); `versions`: store path -> a version
    string (what the worker caches a file by, e.g. the decontamination index)."""

    unit: str
    attempt: int
    root: str
    staged: str
    get: dict[str, str] = field(default_factory=dict)
    put: dict[str, str] = field(default_factory=dict)
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    speculative: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grant:
        return cls(**data)


DEFAULT_REGION = "us-east-1"


def bucket_region(client: Any, bucket: str) -> str:
    """The region S3 keeps `bucket` in (GetBucketLocation; none: us-east-1, and the legacy
    "EU": eu-west-1); us-east-1 when the store cannot say (a logged warning: URLs signed
    for another region than the bucket's are refused by S3)."""
    try:
        where = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except Exception as exc:  # no permission, a store without the call
        log.warning(
            "bucket %s: could not ask its region (%s); presigning for %s (set "
            "output.storage_options.client_kwargs.region_name if it is elsewhere)",
            bucket,
            exc,
            DEFAULT_REGION,
        )
        return DEFAULT_REGION
    return {None: DEFAULT_REGION, "": DEFAULT_REGION, "EU": "eu-west-1"}.get(where, where)


class Presigner:
    """Presigned URLs for the objects of one s3:// store, with the trusted side's
    credentials (the same endpoint and keys as its `Store`; unset keys: botocore's chain)."""

    def __init__(self, store: Any, expires_s: int = EXPIRES_S) -> None:
        if not store.output.uri.startswith("s3://"):
            raise StorageError(
                f"output.uri {store.output.uri!r}: presigned URLs need an s3:// output"
            )
        opts = _storage_options(store.output)  # credentials in clear (the fsspec boundary)
        client_kwargs = dict(opts.get("client_kwargs") or {})
        # a URL is signed for the bucket's region (SigV4): the configured one, else the
        # environment's, else what the store says the bucket's is
        region = (
            client_kwargs.get("region_name")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        bucket = str(store.root).partition("/")[0]

        def client(region_name: str) -> Any:
            return botocore.session.get_session().create_client(
                "s3",
                region_name=region_name,
                endpoint_url=client_kwargs.get("endpoint_url"),
                aws_access_key_id=opts.get("key"),
                aws_secret_access_key=opts.get("secret"),
                aws_session_token=opts.get("token"),
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )

        self.region = region or bucket_region(client(DEFAULT_REGION), bucket)
        self._client = client(self.region)
        self.expires_s = expires_s

    def url(self, method: str, path: str) -> str:
        """A presigned URL for `method` (GET or PUT) of the store path `path` (bucket/key)."""
        bucket, _, key = path.partition("/")
        op = {"GET": "get_object", "PUT": "put_object"}[method]
        return str(
            self._client.generate_presigned_url(
                op, Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expires_s
            )
        )


class GrantStore:
    """The `Store` of an untrusted worker: only its grant's reads and its one write."""

    local = False

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.root = grant.root
        self.uri = f"s3://{grant.root}"
        self.written: dict[str, dict[str, Any]] = {}  # path -> {"bytes", "sha256"}

    # paths: as `Store` builds them
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def run_path(self, run_id: str, *parts: str) -> str:
        return self.path(RUNS_DIR, run_id, *parts)

    def location(self, path: str) -> str:
        return f"s3://{path}"

    def url(self, *parts: str) -> str:
        return self.location(self.path(*parts))

    def _refuse(self, what: str, path: str) -> GrantRefused:
        return GrantRefused(
            f"unit {self.grant.unit} attempt {self.grant.attempt}: {what} "
            f"{self.location(path)} is not granted to this worker (untrusted workers hold "
            "presigned URLs for their own input and staging key only)"
        )

    def _http(self, method: str, url: str, data: bytes | None = None) -> bytes:
        last: Exception | None = None
        for _ in range(HTTP_TRIES):
            # an explicit type: urllib's default (a form) makes some servers parse the body
            headers = {} if data is None else {"Content-Type": "application/octet-stream"}
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
                    return bytes(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise GrantRefused(
                        f"unit {self.grant.unit}: {method} refused by the store "
                        f"({exc.code}): the grant expired or does not cover it"
                    ) from exc
                if exc.code == 404:
                    raise FileNotFoundError(f"{method} {url.split('?')[0]}: not found") from exc
                if exc.code < 500:  # the request itself is wrong: no retry helps
                    raise StorageError(
                        f"unit {self.grant.unit}: {method} failed: HTTP {exc.code}"
                    ) from exc
                last = exc
            except (urllib.error.URLError, OSError) as exc:
                last = exc
        raise StorageError(f"unit {self.grant.unit}: {method} failed: {last}") from last

    # reads
    def read_bytes(self, path: str) -> bytes:
        url = self.grant.get.get(path)
        if url is None:
            raise self._refuse("reading", path)
        return self._http("GET", url)

    def read_optional(self, path: str) -> bytes | None:
        try:
            return self.read_bytes(path)
        except FileNotFoundError:
            return None

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.read_bytes(path)), columns=columns)

    def version(self, path: str) -> str:
        """What a cached read of `path` is keyed by (the grant says; else its URL's path)."""
        return self.grant.versions.get(path, path)

    # the one write
    def write_bytes(self, path: str, data: bytes) -> None:
        url = self.grant.put.get(path)
        if url is None:
            raise self._refuse("writing", path)
        self._http("PUT", url, data)
        self.written[path] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def write_table(self, path: str, table: pa.Table, compression: str | None = "zstd") -> tuple[int, str]:  # fmt: skip
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=compression)
        data = buf.getvalue()
        self.write_bytes(path, data)
        return len(data), hashlib.sha256(data).hexdigest()

    # everything else a Store does: refused
    def exists(self, path: str) -> bool:
        raise self._refuse("checking", path)

    def ls(self, path: str) -> list[str]:
        raise self._refuse("listing", path)

    def rm(self, path: str) -> None:
        raise self._refuse("removing", path)

    def create_bytes(self, path: str, data: bytes) -> bool:
        raise self._refuse("creating", path)

    def write_json(self, path: str, obj: Any) -> None:
        raise self._refuse("writing", path)

    @property
    def fs(self) -> Any:
        raise GrantRefused(
            f"unit {self.grant.unit}: no filesystem on an untrusted worker (it holds no "
            "storage credentials)"
        )


def worker_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config an untrusted worker gets: no storage options, no credentials block,
    no Hub settings, no TLS file paths of the flow's machine (plain data, JSON mode)."""
    out = json.loads(json.dumps(config, default=str))
    output = out.setdefault("output", {})
    output["storage_options"] = {}
    output["credentials_block"] = None
    output["hub"] = None
    cluster = out.setdefault("cluster", {})
    if cluster.get("tls"):
        cluster["tls"] = {k: "(withheld)" for k in ("ca_file", "cert_file", "key_file")}
    cluster["untrusted_workers"] = True
    return out


__all__ = ["EXPIRES_S", "Grant", "GrantRefused", "GrantStore", "Presigner", "worker_config"]
