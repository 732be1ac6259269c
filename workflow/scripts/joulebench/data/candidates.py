"""Candidate copies without comparing all pairs: every image is hashed (64-bit pHash) through
windows that cover the edits a copy gets, every shift within `near_duplicate_max_shift` pixels and
every crop of up to a tenth of the side resized back (axis_windows); an image's centre-crop hash
is matched against every window hash of the others by Hamming distance (multi-index search,
hamming.close_pairs), and the candidates' 8x8 grey thumbnails must correlate at the windows where
their hashes agree best. Both thresholds are chosen from the data by default (auto_thresholds),
from random pairs of images.
"""

from dataclasses import dataclass

import numpy as np

from joulebench.data import hamming
from joulebench.data.copy_distance import aligned_search_cost, close_copies, crop_most
from joulebench.data.image_hash import (
    ALIGN_SIDE,
    HASH_INPUT,
    HASH_SIZE,
    area_weights,
    dct_matrix,
    to_grey,
    to_verify,
)

DESCRIPTOR_SIDE = 8  # windows are compared as 8x8 grey thumbnails: 64 numbers each
RANDOM_PAIRS = 20000  # pairs of random images that set the automatic thresholds
BEST_WINDOWS = 4  # a pair's thumbnails are compared at the windows where their hashes agree best
# Small sets of small images (the 1,797 8x8 digits: 4e9) skip the hashes' candidate stage: every
# image is compared with every other at every alignment (copy_distance.close_copies), where an 8x8
# image's pHash is too unstable under a one-pixel crop to find its copies. Up to this many
# multiply-adds (a few seconds), keeping pairs within ALIGNED_SEARCH_MARGIN times the copy
# threshold, the neighbourhood that tells a copy from a look-alike in a crowd.
ALIGNED_SEARCH_BUDGET = 2e10
ALIGNED_SEARCH_MARGIN = 4.0
# Crop hashes keep their 64 bits interleaved (every third frequency in each third of the word): each
# chunk of the multi-index search then holds low and high frequencies alike, and the lowest ones,
# much the same in every image, no longer crowd one chunk with unrelated matches (3x fewer).
CROP_BIT_ORDER = np.concatenate([np.arange(chunk, 64, hamming.CHUNKS) for chunk in range(hamming.CHUNKS)])


def axis_windows(side: int, shift: int) -> list[tuple[float, float]]:
    """(start, length) along one axis of every window hashed: where a copy's centre crop
    (s, side - 2s) lies in its original, for each edit a copy gets along that axis. A shift by
    d pixels, |d| <= s; or a crop of t pixels at the start and b at the end, t and b in
    0..crop_most(side) in steps of one hash pixel (side / 32, at least one pixel), resized back
    (the copy's pixel x is the original's t + x (side - t - b) / side). The first is the centre."""
    step = max(1.0, side / HASH_INPUT)
    steps = max(1, round(crop_most(side) / step))
    cuts = [(0.0, 0.0)] + [(float(d), float(-d)) for d in range(-shift, shift + 1) if d]
    cuts += [(t * step, b * step) for t in range(steps + 1) for b in range(steps + 1) if t or b]
    windows = []
    for top, bottom in cuts:
        scale = (side - top - bottom) / side
        length = (side - 2 * shift) * scale
        if length >= min(4, side - 2 * shift):  # tiny images: no window smaller than 4 pixels
            windows.append((top + shift * scale, length))
    return windows


@dataclass
class CropFeatures:
    """Per image: the pHash of each of K windows (every row window of axis_windows with every
    column window, K = R * C, window k = (k // C, k % C); window 0 is the centre crop, the image's
    query), and the grey image at the size copies are verified at, from which the windows'
    thumbnails are made when a pair is compared: K * 8 + S^2 bytes an image."""

    hashes: np.ndarray  # (N, K) uint64, bits in CROP_BIT_ORDER
    shift: int
    verify: np.ndarray  # (N, S, S) uint8 grey, S = min(side, ALIGN_SIDE)
    thumbnail_rows: np.ndarray  # (R, 8, S): each row window of `verify` area-resized to 8 pixels
    thumbnail_columns: np.ndarray  # (C, 8, S)

    @property
    def query(self) -> np.ndarray:
        return self.hashes[:, 0]


def crop_shift(height: int, width: int, max_shift: int) -> int:
    """The shift the windows cover: max_shift, at most an eighth of the side."""
    return max(0, min(max_shift, height // 8, width // 8))


def _window_maps(side: int, windows: list, size_out: int, side_out: int | None = None) -> np.ndarray:
    """(len(windows), size_out, side_out) area resizes of each window of an axis of `side` pixels
    to size_out pixels, applied to the axis resized to side_out pixels (default: side)."""
    side_out = side if side_out is None else side_out
    ratio = side_out / side
    return np.stack(
        [area_weights(side_out, size_out, start * ratio, length * ratio) for start, length in windows]
    )


def _axis_hash_maps(side: int, windows: list) -> np.ndarray:
    """(len(windows) * 8, side): each window area-resized to 32 pixels, then its 8 lowest DCT
    frequencies, the pHash of the window along this axis."""
    dct = dct_matrix(HASH_INPUT)[:HASH_SIZE]
    return (dct @ _window_maps(side, windows, HASH_INPUT)).reshape(-1, side).astype(np.float32)


def crop_features(images, max_shift: int, workers: int = 1, batch: int = 256) -> CropFeatures:
    """Hashes that survive shifts, small crops resized back, and re-encoding.

    `images`: (N, C, H, W) uint8 pixels, or a list of such arrays (the splits, in order), read a
    batch at a time (memory maps stay on disk). Every image is hashed through the windows of
    axis_windows in both axes, s = crop_shift: a copy shifted by up to s pixels, or cropped by up
    to a tenth of the side and resized back, has a centre crop equal, or within a fraction of a
    hash pixel, to one of the original's windows. A window's hash is separable: the 8 lowest
    DCT frequencies of its 32-pixel area resize along rows, the same along columns, so all K are
    two matrix products per image. Batches are processed in `workers` threads (numpy releases
    the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    parts = images if isinstance(images, list | tuple) else [images]
    count, (height, width) = sum(len(part) for part in parts), parts[0].shape[2:]
    shift = crop_shift(height, width, max_shift)
    row_windows, column_windows = axis_windows(height, shift), axis_windows(width, shift)
    rows, columns = _axis_hash_maps(height, row_windows), _axis_hash_maps(width, column_windows)
    crops, side = len(row_windows) * len(column_windows), min(height, width, ALIGN_SIDE)
    hashes = np.empty((count, crops), dtype=np.uint64)
    verify = np.empty((count, side, side), dtype=np.uint8)
    jobs, first = [], 0
    for part in parts:
        jobs += [(part, start, first + start) for start in range(0, len(part), batch)]
        first += len(part)

    def one_batch(job) -> None:
        part, start, row = job
        grey = to_grey(np.ascontiguousarray(part[start : start + batch]))
        n = len(grey)
        verify[row : row + n] = to_verify(grey, side)
        grey = grey.astype(np.float32)
        # (n, R, W, 8): the 8 row frequencies of each row window; then (n, R, C, 8, 8) per window.
        along_rows = (
            np.matmul(rows, grey).reshape(n, len(row_windows), HASH_SIZE, width).transpose(0, 1, 3, 2)
        )
        low = np.matmul(columns, along_rows).reshape(n, crops, HASH_SIZE**2)
        middle = np.sort(low, axis=2)[:, :, HASH_SIZE**2 // 2 - 1 : HASH_SIZE**2 // 2 + 1]
        bits = low > middle.mean(axis=2, keepdims=True)  # above the median, as pHash
        packed = np.packbits(bits[:, :, CROP_BIT_ORDER], axis=2)
        hashes[row : row + n] = np.ascontiguousarray(packed).view(">u8")[:, :, 0]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one_batch, jobs))
    thumbnail_rows = _window_maps(height, row_windows, DESCRIPTOR_SIDE, side).astype(np.float32)
    thumbnail_columns = _window_maps(width, column_windows, DESCRIPTOR_SIDE, side).astype(np.float32)
    return CropFeatures(hashes, shift, verify, thumbnail_rows, thumbnail_columns)


def _window_thumbnails(features: CropFeatures, images: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(n, m, 64) float32 8x8 grey thumbnails of windows windows[i] (n, m) of image images[i],
    with zero mean and unit length, so a dot product is their correlation (brightness and
    contrast changes do not count)."""
    count = len(features.thumbnail_columns)
    grey = features.verify[images].astype(np.float32)[:, None]  # (n, 1, S, S)
    rows, columns = features.thumbnail_rows[windows // count], features.thumbnail_columns[windows % count]
    small = (rows @ grey @ columns.transpose(0, 1, 3, 2)).reshape(*windows.shape, -1)
    small -= small.mean(axis=-1, keepdims=True)
    small /= np.maximum(np.linalg.norm(small, axis=-1, keepdims=True), 1e-6)
    return small


def pair_scores(
    features: CropFeatures, first: np.ndarray, second: np.ndarray, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(bits, similarity) of image pairs first[i], second[i]: the fewest bits between either's
    query and the other's windows, and the best correlation of the query's thumbnail with the
    other's thumbnails at the BEST_WINDOWS windows whose hashes are closest to the query."""
    query, hashes = features.query, features.hashes
    best = min(BEST_WINDOWS, hashes.shape[1])
    bits = np.full(len(first), 64, dtype=np.int64)
    similarity = np.full(len(first), -1.0, dtype=np.float32)
    for start in range(0, len(first), batch):
        pair = slice(start, start + batch)
        a, b = np.asarray(first[pair]), np.asarray(second[pair])
        for asking, asked in ((a, b), (b, a)):
            distance = np.bitwise_count(query[asking, None] ^ hashes[asked])
            closest = np.argpartition(distance, best - 1, axis=1)[:, :best]
            bits[pair] = np.minimum(bits[pair], distance.min(axis=1))
            centre = _window_thumbnails(features, asking, np.zeros((len(a), 1), dtype=np.int64))
            there = _window_thumbnails(features, asked, closest)
            correlation = np.einsum("nd,nkd->nk", centre[:, 0], there).max(axis=1)
            similarity[pair] = np.maximum(similarity[pair], correlation)
    return bits, similarity


def auto_thresholds(features: CropFeatures, seed: int = 0) -> tuple[int, float]:
    """Near-duplicate thresholds chosen from the data, from random pairs of distinct images
    (nearly all unrelated): (max bits, min similarity).

    Bits: half the 1st percentile of their pHash distances, within 2..4 (shifted, cropped and
    re-encoded copies sit 0-4 bits apart once aligned; more bits cost far more candidate
    comparisons). Similarity: the 99.99th percentile of their thumbnail correlation at the
    best-matching windows, within 0.90..0.98. Small, look-alike images (8x8 digits) get strict
    thresholds, textured photos looser ones; the clamps keep tiny datasets, whose percentiles
    mean little, at sensible values. bench_dedup.py measures them.
    """
    count = len(features.hashes)
    if count < 2:
        return 2, 0.98
    rng = np.random.default_rng(seed)
    first = rng.integers(0, count, RANDOM_PAIRS)
    second = (first + rng.integers(1, count, RANDOM_PAIRS)) % count  # never the image itself
    distance, similarity = pair_scores(features, first, second)
    bits = int(np.percentile(distance, 1) // 2)
    similarity = float(np.percentile(similarity, 99.99))
    return int(np.clip(bits, 2, 4)), round(float(np.clip(similarity, 0.90, 0.98)), 4)


def query_pairs(features: CropFeatures, max_distance: int) -> np.ndarray:
    """Image pairs (i < j), as codes i * N + j, where one's query hash is within max_distance bits
    of one of the other's window hashes (hamming.close_pairs between queries and windows)."""
    count, crops = features.hashes.shape
    owner = np.repeat(np.arange(count, dtype=np.int64), crops)
    first, second = hamming.close_pairs(features.query, features.hashes.ravel(), max_distance, owner)
    other = first != second
    first, second = first[other], second[other]
    return np.unique(np.minimum(first, second) * count + np.maximum(first, second))


def near_pairs(features: CropFeatures, max_distance: int, min_similarity: float) -> tuple[np.ndarray, ...]:
    """Image pairs (i < j) whose hashes are within max_distance bits (query_pairs) and whose
    thumbnails correlate at least min_similarity at the best windows; with bits and similarity."""
    codes = query_pairs(features, max_distance)
    count = len(features.hashes)
    first, second = codes // count, codes % count
    bits, similarity = pair_scores(features, first, second)
    keep = similarity >= min_similarity
    return first[keep], second[keep], bits[keep], similarity[keep]


def aligned_pairs(features: CropFeatures, max_copy: float) -> tuple[np.ndarray, ...] | None:
    """Every pair (i < j) within ALIGNED_SEARCH_MARGIN times max_copy of copy distance, found by
    comparing all pairs at every alignment (first, second, copy distance); None where that costs
    more than ALIGNED_SEARCH_BUDGET and the window hashes find the candidates."""
    side = features.verify.shape[-1]
    if aligned_search_cost(len(features.verify), side, features.shift) > ALIGNED_SEARCH_BUDGET:
        return None
    return close_copies(features.verify, features.shift, ALIGNED_SEARCH_MARGIN * max_copy)
