"""Push the published dataset folder (`OUTPUT/dataset/`) to the Hugging Face Hub, as one commit.

What is pushed is whatever the folder holds, listed through the store (local or `s3://`):
every file, at its path relative to the folder. The commit also deletes the repository's
files that the folder no longer has (a re-publish never leaves stale shards behind), except
`.gitattributes`. One `create_commit` with `CommitOperationAdd`/`CommitOperationDelete`: the
Hub sees the new dataset all at once or not at all. Resuming: `create_commit` pre-uploads
large files to the Hub's LFS storage, content-addressed by sha256, and skips blobs the Hub
already holds, so a push interrupted after its uploads re-sends no data.

Before any upload the token is checked: present (`HF_TOKEN`, or the Secret block the caller
resolved), shaped like a token, then accepted by the Hub (`whoami`: a network call; offline
it fails as "cannot reach the Hub", still before anything is uploaded). The token is added to
the log masker and never printed.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthgen.config.secrets import MASKER
from synthgen.errors import HubError, HubTokenError
from synthgen.io.layout import DatasetLayout
from synthgen.io.store import Store

KEEP_REMOTE = {".gitattributes"}


@dataclass(frozen=True)
class HubTarget:
    repo: str
    private: bool = False
    revision: str | None = None


def token_from_env(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None


def check_token_shape(token: str | None, source: str) -> str:
    """The token, stripped; a `HubError` naming `source` when it is missing or malformed
    (no network: whether the Hub accepts it is `whoami`'s answer)."""
    if token is None or not token.strip():
        raise HubTokenError(
            f"no Hugging Face token: set HF_TOKEN or output.hub.token_block ({source})"
        )
    token = token.strip()
    MASKER.add([token])
    if any(c.isspace() for c in token) or len(token) < 8:
        raise HubTokenError(
            f"the Hugging Face token from {source} is malformed (whitespace or too short)"
        )
    return token


def dataset_files(store: Store) -> list[tuple[str, str]]:
    """(path in the repository, store path) of every file under OUTPUT/dataset/."""
    base = DatasetLayout(store).dir
    try:
        found = store.retry(lambda: store.fs.find(base), f"listing {store.location(base)}")
    except FileNotFoundError:
        found = []
    out = []
    for path in sorted(found):
        rel = posixpath.relpath(path, base)
        if rel.startswith(".."):  # pragma: no cover - find stays under base
            continue
        out.append((rel, path))
    if not out:
        raise HubError(f"{store.location(base)}: no published dataset to push (run it first)")
    return out


def _api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def check_access(api: Any, token: str, target: HubTarget) -> str:
    """Who the token belongs to (the Hub's `whoami`); a clear `HubError` before any upload."""
    try:
        who = api.whoami(token=token)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise HubTokenError(f"the Hub refused the token (401) for {target.repo}") from None
        raise HubError(
            f"cannot reach the Hugging Face Hub to check the token ({type(exc).__name__}: "
            f"{MASKER.mask(str(exc))[:200]}); nothing was uploaded"
        ) from None
    return str(who.get("name", "?")) if isinstance(who, dict) else "?"


def push_dataset(
    store: Store,
    target: HubTarget,
    token: str | None,
    *,
    message: str | None = None,
    api_factory: Callable[[str], Any] = _api,
    token_source: str = "HF_TOKEN",
) -> dict[str, Any]:
    """Push OUTPUT/dataset/ to `target` as one commit; returns what was committed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    token = check_token_shape(token, token_source)
    files = dataset_files(store)  # nothing to push is an error before the network
    api = api_factory(token)
    user = check_access(api, token, target)
    try:
        api.create_repo(target.repo, repo_type="dataset", private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(
                target.repo, branch=target.revision, repo_type="dataset", exist_ok=True
            )
        remote = set(
            api.list_repo_files(target.repo, repo_type="dataset", revision=target.revision)
        )
    except HubError:
        raise
    except Exception as exc:
        raise HubError(
            f"{target.repo}: {type(exc).__name__}: {MASKER.mask(str(exc))[:300]}"
        ) from None
    local = {rel for rel, _ in files}
    with tempfile.TemporaryDirectory(prefix="synthgen-hub-") as tmp:  # removed on failure too
        adds = []
        for rel, path in files:
            if store.local:
                source: str = path
            else:  # a remote store: fetched to a temporary file, streamed from there
                source = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(source), exist_ok=True)
                store.retry(
                    lambda p=path, s=source: store.fs.get_file(p, s),
                    f"reading {store.location(path)}",
                )
            adds.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=source))
        deletes = [
            CommitOperationDelete(path_in_repo=rel) for rel in sorted(remote - local - KEEP_REMOTE)
        ]
        try:
            info = api.create_commit(
                repo_id=target.repo,
                repo_type="dataset",
                operations=[*adds, *deletes],
                commit_message=message or "synthgen: publish dataset",
                revision=target.revision,
            )
        except Exception as exc:
            raise HubError(
                f"{target.repo}: the commit failed ({type(exc).__name__}: "
                f"{MASKER.mask(str(exc))[:300]}); re-run `synthgen publish` to resume "
                "(blobs the Hub already holds are not uploaded again)"
            ) from None
    return {
        "repo": target.repo,
        "revision": target.revision or "main",
        "user": user,
        "files": sorted(local),
        "deleted": sorted(remote - local - KEEP_REMOTE),
        "commit": str(getattr(info, "commit_url", "") or info),
    }


__all__ = ["HubTarget", "check_access", "check_token_shape", "dataset_files", "push_dataset",
           "token_from_env"]  # fmt: skip
