"""The published folder is a Hugging Face dataset repository as it stands: every reader the card
names loads it and they agree on the rows, which equal the manifest's; local and on S3."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import pytest

from flows.run import synthgen_run
from synthgen.reading import dataset_files
from tests.helpers import fake_config, published_manifest, write_config

datasets = pytest.importorskip(
    "datasets", reason="datasets is a test dependency (pip install -e '.[test]')"
)
pl = pytest.importorskip("polars", reason="polars is a test dependency")
duckdb = pytest.importorskip("duckdb", reason="duckdb is a test dependency")
pd = pytest.importorskip("pandas", reason="pandas comes with datasets")
s3fs = pytest.importorskip("s3fs")

SPLITS = {"test": 0.25}
# dedup on (its index must stay out of the data globs); the quality filters, which the fake
# engine's word salad fails by design, off
CLEAN = {
    "enabled": True,
    "filters": {
        "word_count": {"min_words": 1},
        "gopher_quality": {"enabled": False},
        "gopher_repetition": {"enabled": False},
        "truncated": {"enabled": False},
    },
}


def _split_rows(manifest: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in manifest["files"]:
        out[f["split"]] = out.get(f["split"], 0) + f["rows"]
    return out


def _local_counts(d: str, cache: Path) -> dict[str, object]:
    return {
        "load_dataset(DIR)": {
            k: len(v) for k, v in datasets.load_dataset(d, cache_dir=str(cache)).items()
        },
        "load_dataset(parquet, data_dir)": {
            k: len(v)
            for k, v in datasets.load_dataset(
                "parquet", data_dir=d + "/data", cache_dir=str(cache)
            ).items()
        },
        "polars.read_parquet": pl.read_parquet(d + "/data/").height,
        "polars.scan_parquet **": pl.scan_parquet(d + "/**/*.parquet").select(pl.len()).collect().item(),
        "duckdb **": duckdb.sql(f"SELECT count(*) FROM read_parquet('{d}/**/*.parquet')").fetchall()[0][0],
        "pyarrow.dataset": pads.dataset(d + "/data").count_rows(),
        "pandas": len(pd.read_parquet(d + "/data")),
        **_listed_counts(d.removesuffix("/dataset")),
    }  # fmt: skip


def _listed_counts(out: str) -> dict[str, object]:
    """The readers given the card's files (`synthgen.reading.dataset_files`): what readers
    use to see one whole publish while another is written."""
    files = dataset_files(out)
    every = [f for split in files.values() for f in split]
    return {
        "polars(dataset_files)": pl.read_parquet(every).height,
        "duckdb(dataset_files)": duckdb.read_parquet(every).aggregate("count(*)").fetchall()[0][0],
        "pyarrow.dataset(dataset_files)": pads.dataset(every).count_rows(),
        "pandas(dataset_files)": {s: len(pd.concat(pd.read_parquet(f) for f in fs))
                                  for s, fs in files.items()},
    }  # fmt: skip


def _agree(counts: dict[str, object], manifest: dict) -> None:
    per_split = _split_rows(manifest)
    assert set(per_split) == {"train", "test"} and all(per_split.values()), per_split
    for name, got in counts.items():
        want = per_split if isinstance(got, dict) else manifest["rows"]
        assert got == want, f"{name}: {got} != {want}"


def test_every_reader_loads_the_local_folder_and_agrees_with_the_manifest(
    tmp_path, prefect_api
) -> None:
    out = tmp_path / "out"
    data = fake_config(str(out), output__splits=SPLITS, clean=CLEAN)
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete"
    d = str(out / "dataset")
    manifest = published_manifest(out)
    assert manifest["rows"] == res["rows_published"] > 0
    # nothing but the card and data/ in the folder: index, manifest, run state live elsewhere
    assert sorted(p.name for p in (out / "dataset").iterdir()) == ["README.md", "data"]
    assert (out / "dedup_index").is_dir()
    names = sorted(p.name for p in (out / "dataset" / "data").iterdir())
    assert names == sorted(Path(f["path"]).name for f in manifest["files"])
    _agree(_local_counts(d, tmp_path / "hf"), manifest)
    # the card's one-liners are the readers tested here
    card = (out / "dataset" / "README.md").read_text()
    for line in (
        f'datasets.load_dataset("{d}")',
        f'files = synthgen.reading.dataset_files("{out}")',
        'polars.read_parquet(files["train"])',
        f'polars.scan_parquet("{d}/**/*.parquet")',
        f'pandas.read_parquet("{d}/data")',
        f"read_parquet('{d}/**/*.parquet')",
    ):
        assert line in card, line  # fmt: skip

    # the same run republished as sft: the folder switches whole, the raw files are gone
    sft = {**data, "output": {**data["output"], "format": "sft"}}
    res2 = synthgen_run(config=write_config(tmp_path / "sft.yaml", sft))
    assert res2["run_id"] == res["run_id"]
    m2 = published_manifest(out)
    assert m2["publish_id"] != manifest["publish_id"] and m2["rows"] == manifest["rows"]
    names2 = sorted(p.name for p in (out / "dataset" / "data").iterdir())
    assert names2 == sorted(Path(f["path"]).name for f in m2["files"])
    assert not set(names2) & set(names)
    ds = datasets.load_dataset(d, cache_dir=str(tmp_path / "hf2"))
    feat = ds["train"].features["messages"]
    assert isinstance(feat, datasets.List), feat
    assert feat.feature == {"role": datasets.Value("string"), "content": datasets.Value("string")}
    row = ds["train"][0]
    assert row["messages"][-1]["role"] == "assistant" and row["messages"][0]["role"] == "user"
    assert {"prompt_id", "model", "seed", "run_id"} <= set(ds["train"].column_names)
    _agree(_local_counts(d, tmp_path / "hf3"), m2)


def test_every_reader_that_takes_an_endpoint_loads_the_s3_folder(
    tmp_path, prefect_api, s3_server, s3_bucket, monkeypatch
) -> None:
    uri = f"s3://{s3_bucket}/synth"
    opts = {"endpoint_url": s3_server}
    data = fake_config(uri, output__splits=SPLITS, output__storage_options=opts)
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete"
    manifest = published_manifest(uri, opts)
    assert manifest["rows"] == 24
    d = f"{uri}/dataset"
    so = {"client_kwargs": {"endpoint_url": s3_server}}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    po = {"aws_endpoint_url": s3_server, "aws_allow_http": "true", "aws_region": "us-east-1",
          "aws_access_key_id": "testing-key-id", "aws_secret_access_key": "testing-secret"}  # fmt: skip
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(d)) == ["README.md", "data"]
    # datasets refuses remote paths in offline mode; the endpoint is loopback, nothing else
    # is reached. load_dataset(DIR) takes local folders and Hub repos only: not S3 folders.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    files = {s: f"{d}/data/{s}-*.parquet" for s in ("train", "test")}
    con = duckdb.connect()
    con.register_filesystem(fs)
    counts = {
        "load_dataset(parquet, data_files)": {
            k: len(v) for k, v in datasets.load_dataset(
                "parquet", data_files=files, storage_options={"s3": so},
                cache_dir=str(tmp_path / "hf"),
            ).items()
        },
        "polars.read_parquet": pl.read_parquet(d + "/data/", storage_options=po).height,
        "polars.scan_parquet **": pl.scan_parquet(d + "/**/*.parquet", storage_options=po)
        .select(pl.len()).collect().item(),
        "duckdb ** (fsspec)": con.sql(f"SELECT count(*) FROM read_parquet('{d}/**/*.parquet')")
        .fetchall()[0][0],
        "pyarrow.dataset": pads.dataset(d.removeprefix("s3://") + "/data", filesystem=fs).count_rows(),
        "pandas": len(pd.read_parquet(d + "/data", storage_options=so)),
    }  # fmt: skip
    listed = dataset_files(uri, so)  # the card's files, as URLs
    every = [f for split in listed.values() for f in split]
    assert all(f.startswith(f"{d}/data/") for f in every), every
    counts |= {
        "load_dataset(parquet, dataset_files)": {
            k: len(v) for k, v in datasets.load_dataset(
                "parquet", data_files=listed, storage_options={"s3": so},
                cache_dir=str(tmp_path / "hf-listed"),
            ).items()
        },
        "polars(dataset_files)": pl.read_parquet(every, storage_options=po).height,
        "pandas(dataset_files)": {s: len(pd.concat(pd.read_parquet(f, storage_options=so)
                                                   for f in fs)) for s, fs in listed.items()},
    }  # fmt: skip
    _agree(counts, manifest)
    card = fs.cat_file(f"{d}/README.md").decode()
    assert f'files = synthgen.reading.dataset_files("{uri}", so)' in card
