"""The dataset card, `dataset/README.md`: YAML front matter a Hugging Face reader acts on
(`configs` listing exactly the data files of the current publish, `dataset_info`, license,
size category, task categories, tags) and what a reviewer needs to judge the data.

Writing the card is the publish's switch: `datasets.load_dataset(DIR)` reads the files its
`configs` list, so a reader sees the previous publish until it lands and this one after.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import yaml

from synthgen.errors import SynthgenError

FRONT = "---\n"

_SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]

_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def size_category(rows: int) -> str:
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "n>1B"


def feature_yaml(name: str, t: pa.DataType) -> dict[str, Any]:
    """One column as a `dataset_info.features` entry (what `datasets.Features` writes)."""
    return {"name": name, **_feature_type(t)}


def _feature_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner):
            return {"list": [feature_yaml(f.name, f.type) for f in inner]}
        if pa.types.is_list(inner) or pa.types.is_large_list(inner):
            return {"list": _feature_type(inner)}
        return {"list": _dtype(inner)}
    if pa.types.is_struct(t):
        return {"struct": [feature_yaml(f.name, f.type) for f in t]}
    return {"dtype": _dtype(t)}


def _dtype(t: pa.DataType) -> str:
    name = str(t)
    return _DTYPES.get(name, name)


def front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a card ({} when it has none)."""
    if not card.startswith(FRONT):
        return {}
    end = card.find("\n" + FRONT, len(FRONT) - 1)
    if end < 0:
        raise SynthgenError("dataset card: front matter without its closing '---'")
    data = yaml.safe_load(card[len(FRONT) : end + 1]) or {}
    return data if isinstance(data, dict) else {}


def _metadata(m: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    by_split: dict[str, list[dict[str, Any]]] = {}
    for f in m["files"]:
        by_split.setdefault(f["split"], []).append(f)
    splits = [s for s in m["splits"] if by_split.get(s)]
    fmt = m["format"]["name"]
    tags = ["synthetic", "synthgen", fmt]
    if fmt == "sft":
        tags.append("conversational")
    if fmt == "dpo":
        tags += ["dpo", "preference"]
    meta: dict[str, Any] = {
        "license": m["license"],
        "pretty_name": f"synthgen {m['config']['name']} ({m['run_id']})",
        "size_categories": [size_category(m["rows"])],
        "task_categories": ["text-generation"],
        "tags": tags,
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": [f["path"] for f in by_split[s]]} for s in splits
                ],
            }
        ],
        "dataset_info": {
            "features": [feature_yaml(f.name, f.type) for f in schema],
            "splits": [
                {"name": s, "num_examples": sum(f["rows"] for f in by_split[s])} for s in splits
            ],
            "download_size": sum(f["bytes"] for f in m["files"]),
        },
        "synthgen": {
            "run_id": m["run_id"],
            "publish_id": m["publish_id"],
            "config_hash": m["config_hash"],
            "manifest": m["manifest_path"],
            "rows": m["rows"],
        },
    }
    if m["license"] == "other":
        meta["license_name"] = "unspecified"
    return meta


def _usd(v: Any) -> str:
    return "n/a" if v is None else f"${float(v):.6f}"


def _sampling_line(s: dict[str, Any]) -> str:
    keys = ("temperature", "top_p", "top_k", "max_new_tokens", "seed", "n")
    return ", ".join(f"{k}={s[k]}" for k in keys if s.get(k) is not None)


def _generation(cfg: dict[str, Any]) -> list[str]:
    model = cfg["model"]
    out = [
        f"- model: `{model.get('path') or 'SmolLM2-135M-Instruct (bundled)'}` "
        f"(engine `{model['engine']}`)",
        f"- sampling: {_sampling_line(cfg['sampling'])}",
        f"- prompt source: `{json.dumps(cfg['prompts'], sort_keys=True)}`",
    ]
    for st in cfg.get("stages") or []:
        m = (st.get("model") or {}).get("path") or "the run's model"
        sampling = {k: v for k, v in (st.get("sampling") or {}).items() if v is not None}
        how = json.dumps(sampling, sort_keys=True) if sampling else "the run's"
        out.append(f"- stage `{st['name']}` (model {m}; sampling {how}):")
        if st.get("system"):
            out.append(f"  - system: `{st['system']}`")
        out.append(f"  - prompt: `{st['prompt']}`")
        for key in ("parse", "keep_if"):
            if st.get(key):
                out.append(f"  - {key}: `{st[key]}`")
    if cfg.get("stages"):
        sel = cfg.get("select") or {}
        out.append(f"- select: `{json.dumps(sel, sort_keys=True)}`")
    return out


def _load_lines(location: str, splits: list[str], s3: bool) -> list[str]:
    d = location.rstrip("/")
    out = d.removesuffix("/dataset")
    listed = [
        "Readers given the files this card lists see this dataset whole, even while a new",
        "publish of the same output is written (`synthgen.reading.dataset_files` reads them",
        "from this card):",
        "",
        "```python",
    ]
    if s3:
        listed += [
            "# storage options of your endpoint, e.g. so = {'client_kwargs': {'endpoint_url': URL}}",
            "#   and for polars po = {'aws_endpoint_url': URL, 'aws_allow_http': 'true', ...}",
            f'files = synthgen.reading.dataset_files("{out}", so)  # {{split: [file, ...]}}',
            'datasets.load_dataset("parquet", data_files=files, storage_options={"s3": so})',
            'polars.read_parquet(files["train"], storage_options=po)',
            'pandas.concat(pandas.read_parquet(f, storage_options=so) for f in files["train"])',
            "```",
        ]
    else:
        listed += [
            f'datasets.load_dataset("{d}")  # reads this card itself',
            f'files = synthgen.reading.dataset_files("{out}")  # {{split: [file, ...]}}',
            'polars.read_parquet(files["train"])',
            'duckdb.read_parquet(files["train"])',
            'pyarrow.dataset.dataset(files["train"])',
            "```",
        ]
    listed += [
        "",
        "Readers of the folder or of a glob load the same rows, but see both publishes' files",
        "while a new publish of this output runs (or a killed one's until the next publish):",
        "",
    ]
    if s3:
        files = ", ".join(f'"{s}": "{d}/data/{s}-*.parquet"' for s in splits)
        return [
            *listed,
            "```python",
            f'datasets.load_dataset("parquet", data_files={{{files}}}, '
            'storage_options={"s3": so})',
            f'polars.read_parquet("{d}/data/", storage_options=po)',
            f'polars.scan_parquet("{d}/**/*.parquet", storage_options=po)',
            f"duckdb (after con.register_filesystem(s3fs.S3FileSystem(...))): "
            f"SELECT * FROM read_parquet('{d}/**/*.parquet')",
            f'pyarrow.dataset.dataset("{d.removeprefix("s3://")}/data", '
            "filesystem=s3fs.S3FileSystem(...))",
            f'pandas.read_parquet("{d}/data", storage_options=so)',
            "```",
        ]
    return [
        *listed,
        "```python",
        f'datasets.load_dataset("parquet", data_dir="{d}/data")',
        f'polars.read_parquet("{d}/data/")',
        f'polars.scan_parquet("{d}/**/*.parquet")',
        f"duckdb: SELECT * FROM read_parquet('{d}/**/*.parquet')",
        f'pyarrow.dataset.dataset("{d}/data")',
        f'pandas.read_parquet("{d}/data")',
        "```",
    ]


def render_card(m: dict[str, Any], schema: pa.Schema, location: str) -> str:
    """The card of manifest `m` (its files, counts and config), its data at `location`."""
    meta = _metadata(m, schema)
    t = m["totals"]
    cost = m.get("cost") or {}
    dedup = m.get("dedup")
    cfg = m["config"]
    fmt = m["format"]
    splits = [s["name"] for s in meta["dataset_info"]["splits"]]
    clean = cfg.get("clean") or {}
    near = clean.get("near") or {}
    lines = [
        f"# synthgen dataset `{cfg['name']}` — run `{m['run_id']}`",
        "",
        f"Synthetic text generated by synthgen; published {m['published_at']} by synthgen "
        f"{m['synthgen_version']}. Run id `{m['run_id']}`, config hash "
        f"`{m['config_hash'][:16]}`, publish id `{m['publish_id']}`.",
        "",
        "## Contents",
        "",
        f"- format: `{fmt['name']}` ({fmt['description']})",
        f"- rows: {m['rows']} in {len(m['files'])} Parquet files ("
        + ", ".join(
            f"{s}: {x['num_examples']}"
            for s, x in zip(splits, meta["dataset_info"]["splits"], strict=True)
        )
        + ")",
        f"- splits: {json.dumps(m['split_fractions']) if m['split_fractions'] else 'train only'}"
        " (by a hash of the prompt id)",
        "",
        "## Generation",
        "",
        *_generation(cfg),
        "",
        "## Counts",
        "",
        f"- prompts: {t.get('prompts', 0)}; records generated: {t.get('generated', 0)}; "
        f"kept: {t.get('kept_records', m['rows'])}; dropped: {t.get('dropped', 0)}",
        f"- drop reasons: {json.dumps(t.get('drop_counts', {}), sort_keys=True) or '{}'}",
        f"- tokens: {t.get('prompt_tokens', 0)} prompt, {t.get('completion_tokens', 0)} "
        f"completion, {t.get('kept_tokens', 0)} kept",
        "",
        "## Deduplication",
        "",
        (
            f"- settings: exact {(clean.get('exact') or {}).get('enabled')}; near "
            f"{near.get('enabled')} (threshold {near.get('threshold')}, num_perm "
            f"{near.get('num_perm')}, against published {near.get('against_published')})"
            if clean.get("enabled")
            else "- settings: the clean stage was off (no quality filters, no dedup)"
        ),
        "- results: "
        + (
            f"{dedup.get('rows_checked')} rows checked, {dedup.get('candidate_pairs')} "
            f"candidate pairs, {dedup.get('verified_pairs')} duplicate pairs, dropped "
            f"{json.dumps(dedup.get('drop_counts') or {}, sort_keys=True)}"
            if dedup
            else "run-wide dedup did not run"
        ),
        "",
        "## Cost",
        "",
        f"- generation: {_usd(t.get('cost_usd'))}; per 1M completion tokens "
        f"{_usd(cost.get('usd_per_1m_completion_tokens', t.get('usd_per_1m_completion_tokens')))}"
        f"; per 1M kept tokens {_usd(cost.get('usd_per_1m_kept_tokens'))}",
        f"- billed by the workers (held time): {_usd(cost.get('billed_usd'))}",
        "",
        "## Load it",
        "",
        "Every line reads the same rows (synthgen's docs/output.md, \"What readers see "
        'during a publish").',
        "",
        *_load_lines(location, splits, location.startswith("s3://")),
        "",
        "## License",
        "",
        (
            "No license was chosen for this dataset (`output.license: other`): the terms of "
            "the generating model(s) and of the prompt source apply."
            if m["license"] == "other"
            else f"`{m['license']}`; the generating model's terms may also apply."
        ),
        "",
        f"The manifest (`{m['manifest_path']}`, relative to this folder) lists every file "
        "with its rows and sha256, the config (credentials redacted) and the totals.",
    ]
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return FRONT + head + FRONT + "\n" + "\n".join(lines) + "\n"


__all__ = ["feature_yaml", "front_matter", "render_card", "size_category"]
