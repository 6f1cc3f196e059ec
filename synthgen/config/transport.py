"""Where a run's cluster may be reached: the transport policy a config is validated against
(plain tcp:// only on loopback or with `cluster.allow_insecure`, TLS needs certificates).
Pure functions over the cluster section; no file or network access."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthgen.config.cluster import ClusterConfig

SECURE_SCHEMES = frozenset({"tls", "wss"})
INSECURE_SCHEMES = frozenset({"tcp", "ws"})
LOCAL_SCHEMES = frozenset({"inproc"})


def split_address(address: str) -> tuple[str, str]:
    """`tls://host:8786` -> ("tls", "host"); no scheme means tcp, as in distributed."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    rest = rest.strip("/")
    if rest.startswith("["):  # [::1]:8786
        host = rest[1 : rest.find("]")] if "]" in rest else rest[1:]
    elif rest.count(":") > 1:  # bare IPv6 without port
        host = rest
    else:
        host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return scheme.lower(), host


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback IP literals; names are not resolved (DNS can lie)."""
    if host.lower() in {"localhost", "localhost.localdomain", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_problem(cfg: ClusterConfig) -> str | None:
    """Why `cfg`'s address/TLS combination is unacceptable, or None. Pure: no file access."""
    if cfg.address is None:
        if cfg.tls is not None:
            return (
                "cluster.tls is set but cluster.address is unset: TLS is for an existing "
                "scheduler (tls://host:port); a LocalCluster stays on this machine"
            )
        return None
    scheme, host = split_address(cfg.address)
    if not host:
        return f"cluster.address {cfg.address!r} has no host"
    if scheme in SECURE_SCHEMES:
        if cfg.tls is None:
            return (
                f"cluster.address {cfg.address!r} uses {scheme}:// but cluster.tls "
                "(ca_file, cert_file, key_file) is unset"
            )
        return None
    if scheme in INSECURE_SCHEMES:
        if cfg.tls is not None:
            return (
                f"cluster.address {cfg.address!r} is plain {scheme}:// but cluster.tls is set; "
                "use tls://"
            )
        if not is_loopback_host(host) and not cfg.allow_insecure:
            return (
                f"cluster.address {cfg.address!r}: plain {scheme}:// to a non-loopback host "
                "sends prompts, results and credentials unencrypted and lets anyone who can "
                "reach the port run code on the workers; use tls:// with cluster.tls, or set "
                "cluster.allow_insecure: true on a private network"
            )
        return None
    if scheme in LOCAL_SCHEMES:
        return None
    return f"cluster.address {cfg.address!r}: unsupported scheme {scheme!r} (use tls://)"
