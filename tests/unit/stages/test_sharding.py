import pytest

from synthgen.config import BuiltinSource, InputConfig
from synthgen.errors import ConfigError
from synthgen.stages.prompts import load_builtin
from synthgen.stages.sharding import make_shards


def prompts():
    return load_builtin(BuiltinSource(type="builtin"), InputConfig()).records


def test_shards_are_deterministic_and_complete():
    a = make_shards(prompts(), 5)
    b = make_shards(prompts(), 5)
    assert a == b
    assert [s.shard_id for s in a] == [f"shard-{i:05d}" for i in range(5)]
    assert [len(s) for s in a] == [5, 5, 5, 5, 4]
    flat = [pid for s in a for pid in s.prompt_ids]
    assert flat == [p.prompt_id for p in prompts()]


def test_bad_shard_size():
    with pytest.raises(ConfigError):
        make_shards(prompts(), 0)
