"""LSH banding: (bands, rows) from a Jaccard threshold, band keys from signatures."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from synthgen.stages.dedup.minhash import band_mix_constants, splitmix64


def _integrate(f, a: float, b: float, n: int = 400) -> float:
    xs = np.linspace(a, b, n + 1)
    return float(np.trapezoid(f(xs), xs))


@lru_cache(maxsize=64)
def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.01, fn_weight: float = 0.99
) -> tuple[int, int]:
    """The (bands, rows) with bands*rows <= num_perm minimising the weighted area of false
    positives (J < threshold but banded together) and false negatives (J >= threshold but
    never sharing a band) — datasketch's criterion, but weighted towards recall: every
    candidate pair is verified against the signatures afterwards, so a false positive
    costs one comparison while a false negative is a duplicate left in the dataset."""
    best: tuple[float, int, int] | None = None
    for b in range(1, num_perm + 1):
        max_r = num_perm // b
        for r in range(1, max_r + 1):
            fp = _integrate(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = _integrate(lambda s, b=b, r=r: (1 - s**r) ** b, threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if best is None or err < best[0]:
                best = (err, b, r)
    if best is None:
        raise ValueError(f"num_perm={num_perm}: no LSH parameters")
    return best[1], best[2]


@lru_cache(maxsize=64)
def exact_bands_rows(threshold: float, num_perm: int, min_recall: float = 0.999) -> tuple[int, int]:
    """(bands, rows) for candidates that are verified by exact Jaccard afterwards: the most
    rows per band (fewest candidates below the threshold) such that a pair exactly at the
    threshold still shares a band with probability >= min_recall, 1 - (1 - t**r)**b.
    A false positive costs one exact comparison; a false negative is a duplicate kept.
    (0.8, 128) -> (25, 5): a pair at J=0.8 is a candidate with probability 0.99995."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: expected 0 < threshold < 1")
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1.0 - (1.0 - threshold**r) ** b >= min_recall:
            best = (b, r)
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 key of each band of each signature: shape (n_docs, bands).

    A band's `rows` uint32 values are combined with random odd multipliers (a sum mod
    2**64) and finalised with splitmix64; keys of different bands
    are salted with the band index, so (band, key) pairs of every band can be grouped in
    one table. Two different bands colliding only costs a verified-away candidate.
    """
    n = signatures.shape[0]
    if bands * rows > signatures.shape[1]:
        raise ValueError(
            f"bands*rows={bands * rows} exceeds the signature length {signatures.shape[1]}"
        )
    consts = band_mix_constants(rows)
    acc = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):  # value j of every band at once (a strided view)
            acc += signatures[:, j : bands * rows : rows].astype(np.uint64) * consts[j]
    salt = splitmix64(np.arange(1, bands + 1, dtype=np.uint64))
    return splitmix64(acc ^ salt[None, :])


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature positions, row by row."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signature shapes differ: {sig_a.shape} vs {sig_b.shape}")
    if sig_a.size == 0:
        return np.zeros(sig_a.shape[0], dtype=np.float64)
    return (sig_a == sig_b).mean(axis=1)
