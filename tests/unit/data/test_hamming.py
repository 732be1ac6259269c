"""The multi-index Hamming search finds exactly the pairs a full comparison finds."""

import numpy as np

from joulebench.data.hamming import close_pairs


def test_close_pairs_equal_comparing_every_pair_at_every_distance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 400, dtype=np.int64).view(np.uint64)
    flips = [
        np.bitwise_or.reduce(np.uint64(1) << rng.choice(64, k, replace=False).astype(np.uint64))
        for k in range(1, 9)
    ]
    near = np.concatenate([base[k * 50 : (k + 1) * 50] ^ flip for k, flip in enumerate(flips)])
    keys = np.concatenate([base, near, base[:20]])  # equal keys too
    queries = np.concatenate([base[:300], near[::3]])
    distance = np.bitwise_count(queries[:, None] ^ keys[None, :])
    for max_distance in range(9):
        found = close_pairs(queries, keys, max_distance, block=500)
        expected = np.nonzero(distance <= max_distance)
        assert all(np.array_equal(a, b) for a, b in zip(found, expected, strict=True)), max_distance
        groups = np.arange(len(keys)) % 7  # pairs of a query and a group of keys, each once
        in_group = np.unique(expected[0] * 7 + groups[expected[1]])
        by_group = close_pairs(queries, keys, max_distance, groups, block=500)
        assert np.array_equal(by_group[0] * 7 + by_group[1], in_group), max_distance


def test_close_pairs_of_nothing_is_empty():
    empty = np.zeros(0, dtype=np.uint64)
    first, second = close_pairs(empty, np.arange(5, dtype=np.uint64), 4)
    assert len(first) == len(second) == 0
    assert len(close_pairs(np.arange(5, dtype=np.uint64), empty, 4)[0]) == 0
