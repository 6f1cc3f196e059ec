from pathlib import Path

import pytest

from synthgen.config import RunConfig, config_from_dict, load_config
from synthgen.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_default_config_loads_and_is_the_embedded_default():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.model.engine == "transformers"
    assert cfg.model.path is None  # the bundled model
    assert cfg.cluster.address is None  # a LocalCluster
    assert cfg.output.uri == "./data"
    assert cfg.prompts.type == "builtin"


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("shards:\n  size: 4\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: shards\.colour: unknown key"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sampling:\n  max_new_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"sampling\.max_new_tokens"):
        load_config(p)


def test_missing_required_value_names_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("prompts:\n  type: jsonl\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: prompts\.path: Field required"):
        load_config(p)


def test_impossible_values_rejected():
    with pytest.raises(ConfigError, match=r"shards\.size"):
        config_from_dict({"shards": {"size": -3}})
    with pytest.raises(ConfigError, match=r"sampling\.top_p"):
        config_from_dict({"sampling": {"top_p": 1.5}})


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nshards:\n  size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_reach_nested_keys():
    cfg = config_from_dict(
        {}, ["output.uri=s3://bucket/prefix", "shards.size=3", "model.engine=fake"]
    )
    assert cfg.output.uri == "s3://bucket/prefix"
    assert cfg.shards.size == 3
    assert cfg.model.engine == "fake"


def test_override_of_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"shards\.colour: unknown key"):
        config_from_dict({}, ["shards.colour=red"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        config_from_dict({}, ["shards.size"])


def test_run_id_is_stable_and_ignores_where_it_runs():
    a = config_from_dict({"name": "x"})
    b = config_from_dict({"name": "x"}, ["output.uri=s3://b/p", "cluster.n_workers=4"])
    c = config_from_dict({"name": "x"}, ["sampling.seed=7"])
    assert a.run_id == b.run_id
    assert a.run_id != c.run_id
    assert a.run_id.startswith("x-")


def test_public_dict_redacts_credentials():
    cfg = config_from_dict(
        {
            "output": {
                "uri": "s3://b/p",
                "storage_options": {
                    "key": "AKIAXXXX",
                    "secret": "s3cr3t",
                    "endpoint_url": "http://x",
                },
            }
        }
    )
    pub = cfg.public_dict()
    so = pub["output"]["storage_options"]
    assert so["key"] == "***" and so["secret"] == "***"
    assert so["endpoint_url"] == "http://x"
    assert "s3cr3t" not in str(pub)


def test_every_example_config_validates():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if "presets" in path.parts:
            continue
        assert isinstance(load_config(path), RunConfig), path


def test_fingerprint_ignores_spelt_out_defaults_and_follows_data_settings() -> None:
    bare = config_from_dict({"name": "x"})
    spelt = config_from_dict(
        {
            "name": "x",
            "sampling": {"temperature": 0.7, "top_p": 0.95, "seed": 1234},
            "model": {"engine": "transformers", "fake": {"tokens_per_completion": 16}},
        }
    )
    assert bare.fingerprint() == spelt.fingerprint() and bare.run_id == spelt.run_id
    hotter = config_from_dict({"name": "x", "sampling": {"temperature": 0.9}})
    assert hotter.fingerprint() != bare.fingerprint()
    # where and how fast a run goes is not part of it
    moved = config_from_dict({"name": "x", "output": {"uri": "s3://b/p"}})
    assert moved.fingerprint() == bare.fingerprint()
