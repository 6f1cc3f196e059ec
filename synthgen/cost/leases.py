"""The operator's per-worker prices (`cost.worker_prices`): which lease a worker runs under.

A worker's price per hour is the operator's word, never the rented host's: the config's
price table, or the lease the operator agreed with that host. A lease key names a worker by

1. its TLS certificate's CN: `infra/make-certs.sh --issue worker HOST` makes
   `CN=synthgen-HOST`; the key may be `synthgen-HOST` or `HOST`. The stronger identity: a
   host cannot present another host's certificate without that host's key.
2. else its Dask worker name (`dask worker --name`), exactly or as the prefix of the names
   the infra scripts give (`KEY-gpuN` from start-gpu-workers.sh, `KEY-cpu` from
   start-cpu-worker.sh); never an arbitrary prefix (`host1` does not match `host10-gpu0`).
   The name is whatever the host passed to `dask worker`: lease by certificate where hosts
   have their own.

The environment variable SYNTHGEN_PRICE_PER_HOUR, which earlier versions read on the worker,
changes nothing: a worker that has it set logs one warning.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from distributed import get_worker

from synthgen.config.cost import LEASE_CN_PREFIX, CostConfig

log = logging.getLogger(__name__)

# read by earlier versions on the worker; now only warned about
IGNORED_PRICE_ENV = "SYNTHGEN_PRICE_PER_HOUR"

_WARNED = threading.Event()


@dataclass(frozen=True)
class WorkerIdentity:
    """Who a worker is, as far as leases go."""

    cert_cn: str | None = None  # CN of the worker's own TLS certificate (None without TLS)
    name: str | None = None  # its Dask worker name


@dataclass(frozen=True)
class Lease:
    key: str  # the cost.worker_prices key that matched
    per_hour: float
    by: str  # "certificate" | "name"


def _certificate_cn(pem: bytes) -> str | None:
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


@lru_cache(maxsize=16)
def certificate_cn(cert: str) -> str | None:
    """The CN of a PEM certificate, given as a path or as the PEM text itself (distributed's
    `Security` holds either); None when it has no single CN or cannot be read."""
    try:
        if cert.lstrip().startswith("-----BEGIN"):
            pem = cert.encode()
        else:
            with open(cert, "rb") as fh:
                pem = fh.read()
        return _certificate_cn(pem)
    except (OSError, ValueError) as exc:
        log.warning("could not read the worker certificate's name from %s: %s", cert[:80], exc)
        return None


def identity_of(worker: Any) -> WorkerIdentity:
    """The identity of a distributed `Worker` (its certificate CN and its name)."""
    security = getattr(worker, "security", None)
    cert = getattr(security, "tls_worker_cert", None)
    name = getattr(worker, "name", None)
    return WorkerIdentity(
        cert_cn=certificate_cn(cert) if isinstance(cert, str) and cert else None,
        name=str(name) if name is not None else None,
    )


def this_worker() -> WorkerIdentity:
    """The identity of the Dask worker running the current task; empty outside a worker
    (`synthgen estimate`, tests): no lease applies there."""
    try:
        worker = get_worker()
    except ValueError:
        return WorkerIdentity()
    return identity_of(worker)


def _name_matches(key: str, name: str) -> bool:
    return name == key or re.fullmatch(re.escape(key) + r"-(gpu[0-9]+|cpu)", name) is not None


def match_lease(worker_prices: dict[str, float], who: WorkerIdentity) -> Lease | None:
    """The lease naming `who`: by certificate CN first, else by worker name; None (the
    price table applies) when no key names it."""
    if who.cert_cn:
        for key, price in worker_prices.items():
            if who.cert_cn in (key, LEASE_CN_PREFIX + key):
                return Lease(key, price, "certificate")
    if who.name:
        # an exact name beats a prefix
        for key, price in worker_prices.items():
            if who.name == key:
                return Lease(key, price, "name")
        for key, price in worker_prices.items():
            if _name_matches(key, who.name):
                return Lease(key, price, "name")
    return None


def warn_ignored_env(environ: dict[str, str] | None = None) -> bool:
    """Log once per process that $SYNTHGEN_PRICE_PER_HOUR is set and ignored; True if set."""
    env = os.environ if environ is None else environ
    if not env.get(IGNORED_PRICE_ENV, "").strip():
        return False
    if not _WARNED.is_set():
        _WARNED.set()
        log.warning(
            "%s is set on this worker and ignored: a worker's price comes from the run "
            "config (cost.worker_prices, else cost.prices)",
            IGNORED_PRICE_ENV,
        )
    return True


def worker_lease(cost: CostConfig, who: WorkerIdentity | None = None) -> Lease | None:
    """The lease of this worker (default: the one running the current task)."""
    warn_ignored_env()
    if not cost.worker_prices:
        return None
    return match_lease(cost.worker_prices, this_worker() if who is None else who)
