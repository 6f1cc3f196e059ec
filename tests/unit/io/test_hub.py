"""Pushing the published dataset to the Hub, up to the huggingface_hub call boundary (the Hub
cannot be reached here): exactly which operations one commit would carry, for a local and an
S3 store; a missing, malformed or refused token is a clear error before any upload."""

from __future__ import annotations

import subprocess
import sys

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from synthgen.config.secrets import MASKER
from synthgen.errors import HubError, HubTokenError
from synthgen.io.hub import HubTarget, push_dataset
from synthgen.io.layout import DatasetLayout
from synthgen.io.store import Store
from tests.conftest import REPO

TOKEN = "hf_" + "T0kenValue" * 3


class FakeApi:
    """Records the calls HfApi would get."""

    def __init__(self, remote=(), whoami_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.remote = list(remote)
        self.whoami_error = whoami_error
        self.ops: list = []
        self.contents: dict[str, bytes] = {}

    def whoami(self, token=None):
        self.calls.append(("whoami", (), {}))
        if self.whoami_error is not None:
            raise self.whoami_error
        return {"name": "me"}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", (repo_id,), kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", (repo_id,), kw))

    def list_repo_files(self, repo_id, **kw):
        self.calls.append(("list_repo_files", (repo_id,), kw))
        return self.remote

    def create_commit(self, **kw):
        self.calls.append(("create_commit", (), kw))
        self.ops = kw["operations"]
        for op in self.ops:  # read what would be uploaded, while it exists
            if isinstance(op, CommitOperationAdd):
                with op.as_file() as fh:
                    self.contents[op.path_in_repo] = fh.read()

        class Info:
            commit_url = "https://huggingface.co/datasets/org/name/commit/abc"

        return Info()


def _publish_some(store: Store) -> dict[str, bytes]:
    dataset = DatasetLayout(store)
    files = {
        "README.md": b"---\nconfigs: []\n---\n# card\n",
        "data/train-00000-of-00002.parquet": b"PAR1 one PAR1",
        "data/train-00001-of-00002.parquet": b"PAR1 two PAR1",
        "_manifest.json": b'{"rows": 2}',
    }
    for rel, data in files.items():
        store.write_bytes(dataset.file(rel), data)
    return files


def test_one_commit_adds_every_file_and_deletes_stale_ones(any_store: Store) -> None:
    files = _publish_some(any_store)
    api = FakeApi(remote=[".gitattributes", "README.md", "data/old-shard.parquet"])
    done = push_dataset(
        any_store,
        HubTarget("org/name", private=True, revision="v2"),
        TOKEN,
        api_factory=lambda token: api,
    )
    names = [c[0] for c in api.calls]
    assert names == ["whoami", "create_repo", "create_branch", "list_repo_files", "create_commit"]
    assert api.calls[1][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    commit = api.calls[-1][2]
    assert commit["repo_id"] == "org/name" and commit["repo_type"] == "dataset"
    assert commit["revision"] == "v2"
    adds = sorted(op.path_in_repo for op in api.ops if isinstance(op, CommitOperationAdd))
    deletes = [op.path_in_repo for op in api.ops if isinstance(op, CommitOperationDelete)]
    assert adds == sorted(files)
    assert deletes == ["data/old-shard.parquet"]  # .gitattributes is kept
    assert api.contents == files  # byte for byte, from the store (local or S3)
    assert done["files"] == sorted(files) and done["deleted"] == ["data/old-shard.parquet"]


@pytest.mark.parametrize("token", [None, "", "   ", "hf_has space inside"])
def test_a_missing_or_malformed_token_fails_before_any_call(tmp_path, token) -> None:
    from synthgen.config import OutputConfig

    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    _publish_some(store)
    api = FakeApi()
    with pytest.raises(HubTokenError, match="HF_TOKEN"):
        push_dataset(store, HubTarget("org/name"), token, api_factory=lambda t: api)
    assert api.calls == []


def test_a_refused_or_unchecked_token_fails_before_any_upload(tmp_path) -> None:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from synthgen.config import OutputConfig

    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    _publish_some(store)
    resp = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/whoami-v2"))
    api = FakeApi(whoami_error=HfHubHTTPError("Invalid user token.", response=resp))
    with pytest.raises(HubTokenError, match="refused the token"):
        push_dataset(store, HubTarget("org/name"), TOKEN, api_factory=lambda t: api)
    assert [c[0] for c in api.calls] == ["whoami"]

    offline = FakeApi(whoami_error=ConnectionError(f"no route (token {TOKEN})"))
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub") as err:
        push_dataset(store, HubTarget("org/name"), TOKEN, api_factory=lambda t: offline)
    assert not isinstance(err.value, HubTokenError)
    assert TOKEN not in str(err.value)  # masked
    assert [c[0] for c in offline.calls] == ["whoami"]


def test_nothing_published_is_an_error_before_the_network(tmp_path) -> None:
    from synthgen.config import OutputConfig

    api = FakeApi()
    with pytest.raises(HubError, match="no published dataset"):
        push_dataset(Store(OutputConfig(uri=str(tmp_path / "o"))), HubTarget("org/n"), TOKEN,
                     api_factory=lambda t: api)  # fmt: skip
    assert api.calls == []
    assert MASKER.mask(f"x {TOKEN} y") == "x *** y"


def test_the_cli_without_a_token_says_so_in_one_line_exit_2(tmp_path) -> None:
    from synthgen.config import OutputConfig

    out = tmp_path / "out"
    _publish_some(Store(OutputConfig(uri=str(out))))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "publish", str(out), "--hub", "org/name"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "synthgen: error: no Hugging Face token: set HF_TOKEN or output.hub.token_block (HF_TOKEN)"
    ]
