"""Pairs of 64-bit hashes within a Hamming distance, without comparing all pairs.

Multi-index search (Manku, Jain & Das Sarma, WWW 2007; Norouzi, Punjani & Fleet, CVPR 2012): the
64 bits are cut into CHUNKS contiguous chunks. Two hashes within d bits differ in at most d // CHUNKS
bits on at least one chunk (otherwise they would differ in more than d), so per chunk the keys are
sorted once and every query looks up its chunk value and the values a few bits from it (probes)
in a table of where each value's run starts.
Only the hashes found there are compared in full: the search is exact, and with 21-bit chunks a
probe meets about N / 2 million unrelated keys.
"""

from itertools import combinations

import numpy as np

CHUNKS = 3
_INDEX_BITS = 40  # a sorted chunk holds (chunk value << 40) | key index: one fast value sort


def _chunk_edges() -> list[tuple[int, int]]:
    edges = np.linspace(0, 64, CHUNKS + 1).round().astype(int)
    return [(int(low), int(high - low)) for low, high in zip(edges[:-1], edges[1:], strict=True)]


def _flips(width: int, errors: int) -> np.ndarray:
    """Every value of `width` bits with at most `errors` bits set: the probes around a chunk value."""
    masks = [0]
    for count in range(1, errors + 1):
        masks += [sum(1 << bit for bit in bits) for bits in combinations(range(width), count)]
    return np.array(masks, dtype=np.uint64)


def close_pairs(
    queries: np.ndarray,
    keys: np.ndarray,
    max_distance: int,
    groups: np.ndarray | None = None,
    block: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray]:
    """All (query index, key index) pairs whose hashes differ in at most max_distance bits, each
    once, sorted by query then key. With `groups` (the group of each key, e.g. the image a window
    hash belongs to, 0..G-1), (query index, group) pairs instead: a query close to many keys of
    one group is one pair, however many copies of an image hold such keys. `block` bounds the
    comparisons held in memory at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    if len(keys) >= 1 << _INDEX_BITS:
        raise ValueError(f"{len(keys)} keys: at most 2**{_INDEX_BITS} fit the search")
    errors = max(0, int(max_distance)) // CHUNKS
    index_mask = np.uint64((1 << _INDEX_BITS) - 1)
    targets = len(keys) if groups is None else int(groups.max(initial=-1)) + 1
    found = []
    for low, width in _chunk_edges():
        mask = np.uint64((1 << width) - 1)
        packed = (keys >> np.uint64(low)) & mask  # the chunk values, then (value << 40) | index
        # Where each chunk value's run starts in sorted order: a table, not a binary search.
        starts = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(np.bincount(packed.view(np.int64), minlength=1 << width), out=starts[1:])
        packed <<= np.uint64(_INDEX_BITS)
        packed |= np.arange(len(keys), dtype=np.uint64)
        packed.sort()
        probes = (((queries >> np.uint64(low)) & mask)[:, None] ^ _flips(width, errors)[None, :]).astype(
            np.int64
        )
        left = starts[probes].ravel()
        counts = starts[probes + 1].ravel() - left
        hit = np.flatnonzero(counts)
        owner, left, counts = hit // probes.shape[1], left[hit], counts[hit]
        ends = np.cumsum(counts)
        start = 0
        while start < len(hit):  # runs of equal chunk values, about `block` comparisons at a time
            stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + block, "right")))
            n = counts[start:stop]
            first = np.repeat(owner[start:stop], n)
            offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(left[start:stop], n)
            second = (packed[offsets] & index_mask).astype(np.int64)
            close = np.bitwise_count(queries[first] ^ keys[second]) <= max_distance
            second = second[close] if groups is None else groups[second[close]]
            found.append(np.unique(first[close] * targets + second))
            start = stop
        found = [np.unique(np.concatenate(found))] if found else []  # a pair found in several chunks, once
    codes = found[0] if found else np.empty(0, dtype=np.int64)
    return codes // max(1, targets), codes % max(1, targets)
