"""Untrusted workers on a LocalCluster (`cluster.untrusted_workers: true`, issue 17 item 3):
a multi-stage run with decontamination and verification reads and writes through presigned
URLs only, the flow commits every unit, every unit is checked on the other worker (which
only scores the sample the flow sends it), and no staged object stays behind. (The hostile-worker test shows
the same on a TLS cluster with a tampered worker.)"""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest
import s3fs

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import Ledger
from synthgen.io.attempts import commit_markers
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from tests.helpers import CLEAN_ONLY, fake_config, write_config

pytestmark = pytest.mark.slow

STAGES = [
    {"name": "instruction", "prompt": "Write one question about: {{ prompt }}"},
    {"name": "response", "prompt": "{{ instruction }}"},
]


def test_multi_stage_with_decontamination_and_verification_on_untrusted_workers(
    tmp_path, prefect_api, s3_server, s3_bucket
):
    bench = tmp_path / "evals.jsonl"
    bench.write_text(json.dumps({"q": "nothing any fake engine would ever write here"}) + "\n")
    uri = f"s3://{s3_bucket}/u"
    raw = fake_config(uri, shards__size=8, stages=STAGES)
    raw["output"]["storage_options"] = {"endpoint_url": s3_server}
    raw["cluster"] = {"n_workers": 2, "untrusted_workers": True}
    raw["verify"] = {"enabled": True}
    raw["clean"] = {
        **CLEAN_ONLY,
        "decontaminate": {"benchmarks": [{"path": str(bench), "field": "q"}]},
    }
    res = synthgen_run(config=write_config(tmp_path / "u.yaml", raw))
    assert res["status"] == "complete"
    cfg = config_from_dict(raw)
    store = Store(cfg.output)
    for name in ("instruction", "response"):
        markers = commit_markers(store, cfg.run_id, name)
        assert len(markers) == 3, name
    # verification: every unit checked by the worker that did not generate it, and passed;
    # the flow wrote each record and ledger row
    v = res["verification"]
    assert v["statuses"] == {"pass": 6} and v["flagged_workers"] == [] and not v["unverified"]
    layout = RunLayout(store, cfg.run_id)
    records = [
        store.read_json(f"{layout.stage(n).verify_dir}/{f}")
        for n in ("instruction", "response")
        for f in store.ls(layout.stage(n).verify_dir)
        if f != "flagged.json"
    ]
    assert len(records) == 6 and all(r["verdict"]["passed"] for r in records)
    assert all(r["verifier"] != r["generator"] and r["sampled"] > 0 for r in records)
    rows = Ledger(layout).rows().to_pylist()
    assert len([r for r in rows if r["status"] == "verification"]) == 6
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    table = ds.dataset(f"{s3_bucket}/u/dataset/data", format="parquet", filesystem=fs).to_table()
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 24
    keys = fs.find(f"{s3_bucket}/u")
    assert not [k for k in keys if "/staging/" in k], keys
