"""MinHash, LSH banding, candidate pairs, union-find and in-shard dedup."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.config import CleanConfig, NearDedupConfig
from synthgen.stages.dedup.clusters import EXACT, NEAR, candidate_pairs, exact_pairs, resolve
from synthgen.stages.dedup.local import duplicate_reasons
from synthgen.stages.dedup.lsh import band_keys, estimated_jaccard, optimal_bands_rows
from synthgen.stages.dedup.minhash import MinHasher, _ranges, jaccard, word_shingles
from synthgen.stages.dedup.normalize import normalize, text_hash
from tests._cleanutil import mutate, text


def test_normalize_and_hash_ignore_case_width_and_whitespace() -> None:
    assert normalize("  Ｈｅｌｌｏ\u00a0  WORLD\n") == "hello world"
    assert text_hash("Hello   world") == text_hash("hello WORLD ")
    assert text_hash("hello world") != text_hash("hello word")


def test_ranges_matches_python() -> None:
    starts, counts = np.array([5, 0, 9, 20]), np.array([3, 0, 1, 2])
    assert _ranges(starts, counts).tolist() == [5, 6, 7, 9, 20, 21]


def test_signature_estimates_jaccard() -> None:
    m = MinHasher(num_perm=256)
    a, b = [], []
    for s in range(200):
        t = text(s, 80)
        a.append(t)
        b.append(mutate(t, s % 12, seed=s))
    truth = np.array(
        [jaccard(word_shingles(x, 3), word_shingles(y, 3)) for x, y in zip(a, b, strict=True)]
    )
    est = estimated_jaccard(m.signatures(a), m.signatures(b))
    assert abs(float(np.mean(est - truth))) < 0.01
    assert float(np.max(np.abs(est - truth))) < 0.15


def test_signatures_are_deterministic_and_batch_independent() -> None:
    m = MinHasher()
    docs = [text(i) for i in range(30)] + ["", "one", "two words"]
    full = m.signatures(docs)
    alone = np.vstack([m.signatures([d]) for d in docs])
    assert full.dtype == np.uint32 and full.shape == (33, 128)
    assert np.array_equal(full, alone)
    assert np.array_equal(full, MinHasher().signatures(docs))
    assert not np.array_equal(full, MinHasher(seed=2).signatures(docs))


def test_word_shingle_counts_match_reference() -> None:
    m = MinHasher(shingle_size=3)
    docs = ["Hello, World! ß straße Ünïcode x_y", "a b", "", "the cat sat on the mat"]
    _, counts = m.shingle_hashes(docs)
    import re

    expected = [max(len(re.findall(r"\w+", normalize(d))) - 2, 1) for d in docs]
    assert counts.tolist() == expected


def test_char_shingles_detect_small_edits() -> None:
    m = MinHasher(shingle="char", shingle_size=5)
    t = text(1, 40)
    s = m.signatures([t, t.replace("e", "E", 1), mutate(t, 2, 3), text(2, 40)])
    est = estimated_jaccard(s[[0, 0, 0]], s[[1, 2, 3]])
    assert est[0] == 1.0  # case-folded
    assert est[1] > 0.8
    assert est[2] < 0.3


def test_optimal_bands_rows_tracks_threshold() -> None:
    b8, r8 = optimal_bands_rows(0.8, 128)
    b5, r5 = optimal_bands_rows(0.5, 128)
    assert b8 * r8 <= 128 and b5 * r5 <= 128
    assert r8 > r5  # a higher threshold needs more rows per band
    assert NearDedupConfig(threshold=0.8).lsh_params() == (b8, r8)
    assert NearDedupConfig(bands=16).lsh_params() == (16, 8)


def test_band_keys_equal_only_for_equal_bands() -> None:
    sig = np.arange(24, dtype=np.uint32).reshape(2, 12)
    sig[1, :4] = sig[0, :4]
    k = band_keys(sig, 3, 4)
    assert k.shape == (2, 3)
    assert k[0, 0] == k[1, 0] and k[0, 1] != k[1, 1]
    assert len(set(k[0].tolist())) == 3  # bands salted: equal values in two bands differ


def test_candidate_pairs_and_cap() -> None:
    keys = np.array([1, 1, 2, 2, 2, 3], np.uint64)
    ids = np.array([10, 11, 5, 6, 7, 8])
    assert candidate_pairs(keys, ids).tolist() == [[5, 6], [5, 7], [6, 7], [10, 11]]
    big = candidate_pairs(np.zeros(100, np.uint64), np.arange(100), max_bucket_pairs=4)
    assert len(big) == 6 + 96  # all pairs of the first 4, star for the rest
    assert exact_pairs(np.array([7, 3, 7, 7], np.uint64), np.array([3, 0, 1, 2])).tolist() == [
        [1, 2],
        [1, 3],
    ]


def test_resolve_keeps_lowest_rank_and_names_reason() -> None:
    rank = {n: (pid,) for n, pid in {1: "p2", 2: "p1", 3: "p3", 4: "p9"}.items()}
    hashes = {1: 5, 2: 5, 3: 6, 4: 7}
    out = resolve([(1, 2), (3, 1), (4, 4)], rank, hashes)
    assert out == {1: EXACT, 3: NEAR}
    assert resolve([(1, 2)], rank, hashes, keep_always=[1]) == {}


def _dup_inputs(order: list[int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    base, other = text(1), text(2)
    texts = [base, base.upper(), mutate(base, 1, 9), other, text(3)]
    pids = ["p3", "p1", "p2", "p4", "p5"]
    texts = [texts[i] for i in order]
    pids = [pids[i] for i in order]
    m = MinHasher()
    hashes = np.array([text_hash(t) for t in texts], np.uint64)
    return pids, hashes, m.signatures(texts)


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
def test_in_shard_dedup_keeps_lowest_prompt_id(order: list[int]) -> None:
    pids, hashes, sigs = _dup_inputs(order)
    reasons = duplicate_reasons(
        pids, hashes, sigs, np.ones(len(pids), bool), CleanConfig().near, exact=True
    )
    by_pid = {pids[i]: r for i, r in reasons.items()}
    assert by_pid == {"p3": EXACT, "p2": NEAR}


def test_in_shard_dedup_respects_eligibility_and_switches() -> None:
    pids, hashes, sigs = _dup_inputs([0, 1, 2, 3, 4])
    eligible = np.array([True, False, True, True, True])  # p1 dropped by a filter
    reasons = duplicate_reasons(pids, hashes, sigs, eligible, CleanConfig().near)
    assert {pids[i]: r for i, r in reasons.items()} == {"p3": NEAR}  # p2 < p3 kept
    only_exact = duplicate_reasons(pids, hashes, sigs, np.ones(5, bool), None, exact=True)
    assert {pids[i] for i in only_exact} == {"p3"}
    assert duplicate_reasons(pids, hashes, sigs, np.ones(5, bool), None, exact=False) == {}


def test_band_pairs_equals_candidate_pairs() -> None:
    from synthgen.stages.dedup.clusters import band_pairs

    rng = np.random.default_rng(0)
    n, b = 3000, 6
    keys = rng.integers(0, 2**63, size=(n, b), dtype=np.uint64)
    keys[5:2000:2, 3] = keys[4:1999:2, 3]  # many buckets of two
    keys[10:13, 1] = keys[10, 1]  # a bucket of three
    keys[20:120, 2] = keys[20, 2]  # a bucket over the cap
    want = candidate_pairs(keys.ravel(), np.repeat(np.arange(n), b), 16)
    got = band_pairs(keys, 16)
    # 998 + 3 + (120 + 84), less 9 pairs found in two bands: (10, 11) and (20, 21)..(34, 35)
    assert len(got) == 998 + 3 + 120 + 84 - 9
    assert np.array_equal(got, want)
    assert band_pairs(keys[:1]).shape == (0, 2)


def test_drops_of_a_deduplicated_stage_reach_its_descendants_only() -> None:
    import pyarrow as pa

    from synthgen.stages.dedup.cross import apply_drops, row_keys

    # final rows: prompt p, 2 rows of the deduplicated stage x 2 samples each (span 2)
    t = pa.table(
        {
            "prompt_id": ["p", "p", "p", "p"],
            "sample_index": pa.array([0, 1, 2, 3], pa.int32()),
            "drop_reason": pa.array([None] * 4, pa.string()),
        }
    )
    assert row_keys(t, span=2) == ["p#0", "p#0", "p#1", "p#1"]
    out = apply_drops(t, {"p#1": "near_duplicate"}, span=2)
    assert out.column("drop_reason").to_pylist() == [None, None, "near_duplicate", "near_duplicate"]


def test_the_shingle_powers_cache_is_grown_whole_under_concurrent_shards(monkeypatch) -> None:
    """Two shards of one worker (cluster.overlap) hash text in two threads: one grows the
    powers cache while the other reads it. The read must never pair the grown powers with
    still-empty inverses (it raised IndexError in a shard; seen at 1,000 shards)."""
    import threading
    import time

    import numpy as np

    from synthgen.stages.dedup import minhash

    empty = (np.ones(0, np.uint64), np.ones(0, np.uint64))
    monkeypatch.setattr(minhash, "_POWERS", type(minhash._POWERS)(empty))  # a cold cache
    real = np.cumprod
    calls = []
    grown = threading.Event()

    def slow_cumprod(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the powers are done, the inverses not: widen that window
            grown.set()
            time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(minhash.np, "cumprod", slow_cumprod)
    got: dict[str, object] = {}

    def grow() -> None:
        got["grow"] = minhash._powers(100_000)

    t = threading.Thread(target=grow)
    t.start()
    assert grown.wait(10)  # the reader comes between the powers and their inverses
    pw, ipw = minhash._powers(10)
    t.join()
    assert len(pw) == len(ipw) == 10
    assert (pw * ipw == np.ones(10, np.uint64)).all()  # each power times its inverse is 1
