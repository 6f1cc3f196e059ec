"""The reader's side of the publish transaction: the files `OUTPUT/dataset` shows now.

A publish writes its data files (new names), then the card (`dataset/README.md`, one atomic
rename or PUT: the switch), then deletes the previous publish's files. A reader that lists the
folder or globs it can see both publishes' files while that happens, or a killed publish's
files until the next one cleans them; a reader given the files the card lists sees exactly one
publish, whole, whatever is being published or was killed:

    from synthgen.reading import dataset_files
    files = dataset_files("data")                       # {"train": [...], "test": [...]}
    polars.read_parquet(files["train"])
    files = dataset_files("s3://bucket/prefix", {"client_kwargs": {"endpoint_url": URL}})

(`docs/output.md`, "Reading the dataset".)
"""

from __future__ import annotations

import posixpath
from typing import Any

import fsspec

from synthgen.errors import SynthgenError
from synthgen.io.layout import CARD, DATASET_DIR
from synthgen.stages.card import front_matter


def dataset_files(
    output: str, storage_options: dict[str, Any] | None = None
) -> dict[str, list[str]]:
    """{split: [file, ...]} of the dataset published under `output` (the run's
    `output.uri`: a local path or `s3://bucket/prefix`), as its card's front matter lists
    them (`configs[0].data_files`), in the card's order. Local outputs give local paths,
    remote ones URLs with their protocol. `storage_options`: fsspec's, as for
    `pandas.read_parquet` (e.g. `{"client_kwargs": {"endpoint_url": URL}}`)."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    base = posixpath.join(root.rstrip("/"), DATASET_DIR)
    card_path = posixpath.join(base, CARD)
    where = _url(fs, card_path)
    try:
        text = fs.cat_file(card_path).decode("utf-8")
    except FileNotFoundError:
        raise SynthgenError(
            f"{where}: no dataset card: nothing is published under {output}"
        ) from None
    configs = front_matter(text).get("configs") or []
    if not configs or not configs[0].get("data_files"):
        raise SynthgenError(f"{where}: the card's front matter lists no data files (configs)")
    out: dict[str, list[str]] = {}
    for entry in configs[0]["data_files"]:
        paths = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        out[entry["split"]] = [_url(fs, posixpath.join(base, p)) for p in paths]
    return out


def _url(fs: Any, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"
