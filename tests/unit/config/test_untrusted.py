"""`cluster.untrusted_workers` (issue 17 item 3): auto, explicit, what it refuses, and verification with it."""

from __future__ import annotations

import pytest

from synthgen.config import config_from_dict
from synthgen.errors import ConfigError

TLS = {
    "address": "tls://10.0.0.1:8786",
    "tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
}


@pytest.mark.parametrize(
    "uri, cluster, expected",
    [
        ("s3://b/p", TLS, True),  # auto: TLS and an object store
        ("./data", TLS, False),  # auto: a local path has no presigned URLs
        ("s3://b/p", {}, False),  # auto: a LocalCluster on this machine
        ("s3://b/p", {**TLS, "untrusted_workers": False}, False),
        ("s3://b/p", {"untrusted_workers": True}, True),
    ],
)
def test_untrusted_workers_auto_and_explicit(uri, cluster, expected) -> None:
    cfg = config_from_dict({"output": {"uri": uri}, "cluster": cluster})
    assert cfg.untrusted_workers() is expected


def test_untrusted_workers_need_an_object_store() -> None:
    with pytest.raises(ConfigError, match=r"cluster.untrusted_workers.*s3://"):
        config_from_dict({"output": {"uri": "./data"}, "cluster": {"untrusted_workers": True}})


def test_verification_with_untrusted_workers_loads() -> None:
    cfg = config_from_dict({"output": {"uri": "s3://b/p"}, "cluster": TLS, "verify": {"enabled": True}})  # fmt: skip
    assert cfg.untrusted_workers() and cfg.verify.enabled
    cfg = config_from_dict(
        {
            "output": {"uri": "s3://b/p"},
            "cluster": {"untrusted_workers": True},
            "verify": {"enabled": True},
        }  # fmt: skip
    )
    assert cfg.untrusted_workers() and cfg.verify.enabled
