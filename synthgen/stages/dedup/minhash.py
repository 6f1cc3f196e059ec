"""Vectorised MinHash over word or character n-gram shingles.

All shingles of a batch of documents are hashed at once with numpy, with no Python loop
per word: words are found on the code points of the NFKC/case-folded batch (regex \\w
semantics) and hashed with a prefix polynomial hash mod 2**64; characters are hashed
directly. Tokens are combined into n-gram hashes with a rolling multiply-xor in uint64,
finalised with splitmix64. Each of `num_perm` permutations is the multiply-add hash
`(a*x + b) mod 2**32` (a odd) of the top 32 bits x of a shingle hash (classic), or the
stratified variant described on MinHasher; both in uint32 lanes (twice the SIMD width of
uint64), and the signature keeps the minimum per document (np.minimum.reduceat over a
perms x shingles block).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
_WORD = re.compile(r"\w+")
_SEP = "\x1e"  # record separator: not a word character, unchanged by NFKC/casefold
_SEP_CP = ord(_SEP)
_POLY = np.uint64(0x100000001B3)  # odd, so invertible mod 2**64
_POLY_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_CHUNK = 4096  # shingles per block of the (shingles x perms) product: fits in L2


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(_U64, copy=True) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def band_mix_constants(n: int, seed: int = 0x5EED) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(1, 2**63, size=n, dtype=np.uint64) * _U64(2) + _U64(1)


@dataclass(frozen=True)
class MinHasher:
    """MinHash signatures of `num_perm` uint32 values over n-gram shingles.

    stratified=True (default) is a vectorised SuperMinHash-style scheme (Ertl 2017): in
    permutation i every shingle's value is its slot (A*i + B) mod 2**k — an affine
    permutation of the 2**k >= num_perm slots drawn from the shingle's hash, so one shingle
    never takes the same slot twice — in the top k bits, plus the shingle's own random
    value r below them (ties in a slot go to the smaller r). All of it is one multiply-add
    per value, A'*i + (B' + r), as cheap as the classic scheme. The estimator stays
    unbiased and, for documents with fewer shingles than num_perm (short LLM answers), its
    spread drops by about a third (measured around J=0.8 with 128 values: 0.026 vs 0.037).
    stratified=False is classic MinHash, (a*x + b) mod 2**32 per permutation.
    """

    num_perm: int = 128
    shingle: str = "word"  # "word" | "char"
    shingle_size: int = 3
    seed: int = 1
    stratified: bool = True

    def __post_init__(self) -> None:
        if self.shingle not in ("word", "char"):
            raise ValueError(f"shingle kind {self.shingle!r}: expected 'word' or 'char'")
        if self.shingle_size < 1 or self.num_perm < 1:
            raise ValueError(
                f"shingle_size={self.shingle_size}, num_perm={self.num_perm}: both must be >= 1"
            )
        rng = np.random.Generator(np.random.PCG64(self.seed))
        a = rng.integers(0, 2**31, size=self.num_perm, dtype=np.uint32) * np.uint32(2) + 1
        b = rng.integers(0, 2**32, size=self.num_perm, dtype=np.uint64).astype(np.uint32)
        bits = max(1, (self.num_perm - 1).bit_length())  # 2**bits slots >= num_perm
        object.__setattr__(self, "_slot_bits", np.uint32(bits))
        object.__setattr__(self, "_lane", np.uint32)
        object.__setattr__(self, "_slot_index", np.arange(self.num_perm, dtype=np.uint32)[:, None])
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_b", b)
        object.__setattr__(self, "_ngram_consts", band_mix_constants(self.shingle_size, self.seed))

    # ------------------------------------------------------------------ tokens
    def _word_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hash of every word (regex \\w+ after NFKC + case-fold) of all texts concatenated,
        and each text's word count — vectorised over code points, no per-word Python."""
        n_docs = len(texts)
        if n_docs == 0:
            return np.zeros(0, _U64), np.zeros(0, np.int64)
        joined = unicodedata.normalize("NFKC", _SEP.join(t.replace(_SEP, " ") for t in texts))
        folded = joined.casefold()
        if folded.isascii():  # the common case: 1 byte per character, a 256-entry table
            cp = np.frombuffer(folded.encode("ascii"), dtype=np.uint8)
        else:
            cp = np.frombuffer(folded.encode("utf-32-le"), dtype=np.uint32)
        if len(cp) == 0:
            return np.zeros(0, _U64), np.zeros(n_docs, np.int64)
        isw = _is_word_char(cp)
        starts = np.flatnonzero(isw[1:] & ~isw[:-1]) + 1
        ends = np.flatnonzero(isw[:-1] & ~isw[1:]) + 1
        if isw[0]:
            starts = np.concatenate(([0], starts))
        if isw[-1]:
            ends = np.concatenate((ends, [len(cp)]))
        pw, ipw = _powers(len(cp))
        prefix = np.empty(len(cp) + 1, dtype=_U64)
        prefix[0] = 0
        with np.errstate(over="ignore"):
            terms = cp.astype(_U64)
            terms *= pw
            np.cumsum(terms, out=prefix[1:])
            # (H[e] - H[s]) / P^(s+1): the same value wherever the word occurs
            raw = (prefix[ends] - prefix[starts]) * ipw[starts]
        tokens = splitmix64(raw ^ (ends - starts).astype(_U64))
        # words before each separator -> words per text
        bounds = np.searchsorted(starts, np.flatnonzero(cp == _SEP_CP))
        lengths = np.diff(bounds, prepend=0, append=len(starts)).astype(np.int64)
        return tokens, lengths

    @staticmethod
    def _char_tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        norm = [" ".join(unicodedata.normalize("NFKC", t).casefold().split()) for t in texts]
        lengths = np.fromiter((len(t) for t in norm), np.int64, len(norm))
        cps = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32)
        return splitmix64(cps.astype(_U64)), lengths

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.shingle == "word":
            return self._word_tokens(texts)
        return self._char_tokens(texts)

    # ------------------------------------------------------------------ shingles
    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """uint64 hash of every shingle of every text, and each text's shingle count.

        A text shorter than n tokens has one shingle (all its tokens); an empty text has
        one shingle of its own (all empty texts share it).
        """
        tokens, lengths = self.tokens(texts)
        n = self.shingle_size
        total = len(tokens)
        starts_of_doc = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else lengths
        # rolling n-gram over the concatenation (windows crossing a boundary are discarded)
        with np.errstate(over="ignore"):
            if total >= n:
                acc = np.zeros(total - n + 1, dtype=_U64)
                for j in range(n):
                    acc = (acc ^ (tokens[j : total - n + 1 + j] * self._ngram_consts[j])) * _U64(
                        0x9E3779B97F4A7C15
                    )
                full = splitmix64(acc)
            else:
                full = np.zeros(0, _U64)
        counts = np.maximum(lengths - n + 1, 0)
        short = np.flatnonzero(counts == 0)
        if len(short) == 0:
            # every doc has >= n tokens: the valid windows are [start, start+len-n]
            idx = _ranges(starts_of_doc, counts)
            return full[idx], counts
        # short documents: one shingle from their (< n) tokens
        short_hash = np.empty(len(short), dtype=_U64)
        with np.errstate(over="ignore"):
            for k, d in enumerate(short):
                s, ln = starts_of_doc[d], lengths[d]
                acc = _U64(0x51A7E)
                for j in range(ln):
                    acc = (acc ^ (tokens[s + j] * self._ngram_consts[j])) * _U64(0x9E3779B97F4A7C15)
                short_hash[k] = splitmix64(np.array([acc ^ _U64(ln)], _U64))[0]
        out_counts = np.where(counts == 0, 1, counts)
        out = np.empty(int(out_counts.sum()), dtype=_U64)
        out_starts = np.concatenate(([0], np.cumsum(out_counts)[:-1]))
        long_docs = np.flatnonzero(counts > 0)
        out[_ranges(out_starts[long_docs], counts[long_docs])] = full[
            _ranges(starts_of_doc[long_docs], counts[long_docs])
        ]
        out[out_starts[short]] = short_hash
        return out, out_counts

    # ------------------------------------------------------------------ signatures
    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures, shape (len(texts), num_perm), dtype uint32."""
        hashes, counts = self.shingle_hashes(texts)
        return self.signatures_from_hashes(hashes, counts)

    def signatures_from_hashes(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        n_docs = len(counts)
        out = np.empty((n_docs, self.num_perm), dtype=np.uint32)
        if n_docs == 0:
            return out
        if np.any(counts < 1):
            raise ValueError("every document needs at least one shingle")
        offsets = np.concatenate(([0], np.cumsum(counts)))
        lane = self._lane
        width = np.dtype(lane).itemsize * 8
        x = (hashes >> _U64(64 - width)).astype(lane)
        if self.stratified:
            slot_a, slot_b = self._slots(hashes)
        P = self.num_perm
        a = self._a[:, None].astype(lane) | lane(1)
        b = self._b[:, None].astype(lane)
        # (perms x shingles) layout: reduceat along the contiguous axis is ~20x faster
        buf = np.empty((P, _CHUNK), dtype=lane)
        slot_index = self._slot_index.astype(lane)
        d0 = 0
        while d0 < n_docs:
            # documents whose shingles fit in one block (at least one document)
            lo = offsets[d0]
            d1 = int(np.searchsorted(offsets, lo + _CHUNK, side="right")) - 1
            d1 = max(d1, d0 + 1)
            hi = offsets[d1]
            m = hi - lo
            blk = buf[:, :m] if m <= _CHUNK else np.empty((P, m), dtype=lane)
            if self.stratified:
                # shingle d in permutation i: slot (A_d*i + B_d) mod 2**k in the top k bits,
                # its own random value r_d below them: A'_d*i + (B'_d + r_d), two ops
                np.multiply(slot_index, slot_a[None, lo:hi], out=blk)
                blk += slot_b[None, lo:hi]
            else:
                np.multiply(a, x[None, lo:hi], out=blk)
                blk += b
            out[d0:d1] = np.minimum.reduceat(blk, offsets[d0:d1] - lo, axis=1).T
            d0 = d1
        return out

    def _slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per shingle: A (odd, shifted to the top k bits) and B + r (B shifted to the top k
        bits, r a random value below them), all drawn from the shingle's 64-bit hash."""
        lane = self._lane
        width = np.dtype(lane).itemsize * 8
        k = int(self._slot_bits)
        low = (hashes & _U64(0xFFFFFFFF)).astype(np.uint32)
        shift = np.uint32(width - k)
        a = ((low | np.uint32(1)) << shift).astype(lane)
        r = (hashes >> _U64(64 - (width - k))).astype(lane)
        b = (((low >> np.uint32(16)) << shift).astype(lane) + r).astype(lane)
        return a, b


# (P**(i+1), P**-(i+1)): one tuple, replaced whole. A worker runs several shards in threads
# (cluster.overlap); with two lists set one after the other, a thread could see the grown
# powers beside the still-empty inverses (IndexError in a shard, passed on retry)
_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(0, _U64), np.ones(0, _U64))
_POWERS_LOCK = threading.Lock()


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**(i+1) and P**-(i+1) mod 2**64 for i < n (cached, grown by doubling; thread-safe)."""
    global _POWERS
    powers = _POWERS
    if len(powers[0]) < n:
        with _POWERS_LOCK:
            powers = _POWERS
            if len(powers[0]) < n:
                size = max(n, 2 * len(powers[0]), 1 << 16)
                with np.errstate(over="ignore"):
                    powers = (
                        np.cumprod(np.full(size, _POLY, dtype=_U64)),
                        np.cumprod(np.full(size, _POLY_INV, dtype=_U64)),
                    )
                _POWERS = powers
    return powers[0][:n], powers[1][:n]


def _word_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=bool)
    for c in range(0x10000):
        ch = chr(c)
        table[c] = ch.isalnum() or ch == "_"
    return table


_BMP_WORD = _word_table()


def _is_word_char(cp: np.ndarray) -> np.ndarray:
    """Elementwise: does code point match regex \\w (str.isalnum() or '_')?"""
    if cp.dtype == np.uint8:
        return _BMP_WORD[:256][cp]
    out = _BMP_WORD.take(cp, mode="clip")
    if cp.max() > 0xFFFF:
        astral = cp > 0xFFFF
        vals = np.unique(cp[astral])
        good = np.array([chr(int(v)).isalnum() for v in vals], dtype=bool)
        out[astral] = good[np.searchsorted(vals, cp[astral])]
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+c) for each (s, c), vectorised."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    nz = counts > 0
    starts, counts = np.asarray(starts, np.int64)[nz], counts[nz]
    ends = np.cumsum(counts)
    idx = np.ones(total, dtype=np.int64)
    idx[0] = starts[0]
    idx[ends[:-1]] = starts[1:] - (starts[:-1] + counts[:-1]) + 1
    return np.cumsum(idx)


def word_shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """The exact shingle set the word MinHasher samples (for ground truth and tests)."""
    toks = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
