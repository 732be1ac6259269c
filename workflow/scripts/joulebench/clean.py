"""Find and drop bad data: exact and near duplicates, train/test leaks, conflicting labels.

Works on the decoded splits of a prepared dataset (files that did not decode were already
listed by the loader). Every removed image is returned with its reason and the image it matched,
so nothing disappears silently.

Exact duplicates are found by a content hash of the 8-bit pixels. Near duplicates (shifted by a
pixel or two, cropped a little, re-encoded, brightened: the copies real datasets contain, ciFAIR,
Barz & Denzler 2020) in two steps. Candidates: every image is hashed (64-bit pHash, Zauner 2010,
as ImageHash computes it) at each crop offset within `near_duplicate_max_shift` pixels, and an
image's centre-crop hash is matched against every crop hash of the others by Hamming distance
(multi-index search between queries and crops). Verification: the candidates' 8x8 grey thumbnails
must correlate at the best offset. Both thresholds are chosen from the data by default
(auto_thresholds), from the distances between random pairs of images; bench/bench_dedup.py
measures precision and recall. Images linked by either test form a group (connected components); a
group whose labels disagree is removed whole, otherwise its first member is kept, in split order
train, val, test, so a test image that copies a training image is the one removed (leakage).
"""

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")
REASONS = (
    "unreadable",
    "conflicting_labels",
    "leakage",
    "exact_duplicate",
    "near_duplicate",
)
# Columns of removed.csv; files the loader could not use have split "source" and a detail.
REMOVED_COLUMNS = [
    "split", "index", "item", "label", "reason", "detail",
    "matched_split", "matched_index", "matched_item", "matched_label", "hash_distance", "similarity",
]  # fmt: skip
HASH_SIZE = 8  # pHash keeps the 8x8 lowest DCT frequencies: a 64-bit hash
HASH_INPUT = 32  # ... of the image resized to 32x32 grey, as ImageHash does


# What near-duplicate grouping imports, for clean_dataset to import before its energy window opens.
WORK_MODULES = ("scipy.sparse", "scipy.sparse.csgraph")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] back to the 8-bit pixels they were decoded from."""
    scaled = np.multiply(images, np.float32(255.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def stored_uint8(images: np.ndarray, pixel_max: int) -> np.ndarray:
    """A split's images as 8-bit pixels: stored uint8 (pixel_max 255) as they are, floats or
    digits' 0..16 levels scaled to 0..255."""
    if images.dtype == np.uint8 and pixel_max == 255:
        return np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(pixel_max)
    return to_uint8(images)


def removed_frame(removed: list[dict]):
    """removed.csv's table: integer columns stay integers where some rows have no value (files
    that never decoded have no split index, label or match)."""
    import pandas as pd

    frame = pd.DataFrame(removed, columns=REMOVED_COLUMNS)
    for column in ("index", "label", "matched_index", "matched_label", "hash_distance"):
        frame[column] = frame[column].astype("Int64")
    return frame


def content_hashes(pixels: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]


def _grey(pixels: np.ndarray) -> np.ndarray:
    """PIL's convert("L") in integers (ITU-R 601-2 luma), so hashes match ImageHash on the same file."""
    if pixels.shape[1] == 1:
        return pixels[:, 0].astype(np.float64)
    r, g, b = (pixels[:, c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float64)


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) box-filter weights: each output pixel averages the input it covers."""
    edges = np.linspace(0.0, size_in, size_out + 1)
    weights = np.zeros((size_out, size_in))
    for out in range(size_out):
        for pixel in range(size_in):
            overlap = min(edges[out + 1], pixel + 1) - max(edges[out], pixel)
            weights[out, pixel] = max(overlap, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def _dct_matrix(size: int) -> np.ndarray:
    """Unnormalized DCT-II, the transform scipy.fftpack.dct applies by default."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


def perceptual_hashes(pixels: np.ndarray, batch: int = 4096) -> np.ndarray:
    """64-bit pHash of every image, vectorized: grey, area-resize to 32x32, 2-D DCT, 8x8 > median.

    Equal to imagehash.phash bit for bit on 32x32 images (no resize there) and about 10x faster,
    which is what makes thousands of images per second per core possible.
    """
    height, width = pixels.shape[2:]
    resize_rows = _area_weights(height, HASH_INPUT)
    resize_cols = _area_weights(width, HASH_INPUT)
    dct = _dct_matrix(HASH_INPUT)[:HASH_SIZE]
    hashes = np.empty(len(pixels), dtype=np.uint64)
    for start in range(0, len(pixels), batch):
        grey = _grey(pixels[start : start + batch])
        if (height, width) != (HASH_INPUT, HASH_INPUT):
            # ImageHash resizes an 8-bit grey image: round like it does before the DCT.
            grey = np.rint(resize_rows @ grey @ resize_cols.T)
        low = (dct @ grey @ dct.T).reshape(len(grey), -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        hashes[start : start + batch] = np.packbits(bits, axis=1).view(">u8")[:, 0]
    return hashes


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) of distinct hashes that differ in at most max_distance bits.

    Pigeonhole multi-index search (Manku, Jain & Das Sarma, WWW 2007): cut the 64 bits into
    max_distance + 1 chunks; two hashes within max_distance bits agree exactly on at least one
    chunk. Only pairs sharing a chunk value are compared, so the search is exact and far below
    the N^2 of comparing all pairs. `hashes` must be unique (np.unique).
    """
    chunks = min(max_distance + 1, 64)
    edges = np.linspace(0, 64, chunks + 1).astype(np.uint64)
    found = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(high - low)) - 1)
        keys = (hashes >> low) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_hashes = keys[order], hashes[order]
        # Pairs `offset` apart in sorted order share a key; stop when none do any more.
        offset = 1
        while offset < len(order):
            same = np.flatnonzero(sorted_keys[:-offset] == sorted_keys[offset:])
            if not len(same):
                break
            close = same[np.bitwise_count(sorted_hashes[same] ^ sorted_hashes[same + offset]) <= max_distance]
            first, second = order[close], order[close + offset]
            found.append(np.minimum(first, second) * len(hashes) + np.maximum(first, second))
            offset += 1
    codes = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return codes // len(hashes), codes % len(hashes)  # a pair found by several chunks, once


DESCRIPTOR_SIDE = 8  # crops are compared as 8x8 grey thumbnails: 64 numbers (128 bytes) each
RANDOM_PAIRS = 20000  # pairs of random images that set the automatic thresholds


def _thumbnails(grey: np.ndarray) -> np.ndarray:
    """(N, H, W) grey -> (N, 64) float16 area-averaged 8x8 thumbnails, zero mean, unit length, so
    a dot product is their correlation (brightness and contrast changes do not count)."""
    rows = _area_weights(grey.shape[1], DESCRIPTOR_SIDE)
    cols = _area_weights(grey.shape[2], DESCRIPTOR_SIDE)
    small = (rows @ grey @ cols.T).reshape(len(grey), -1)
    small -= small.mean(axis=1, keepdims=True)
    small /= np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)
    return small.astype(np.float16)


@dataclass
class CropFeatures:
    """Per image: the pHash and thumbnail of each of K crops at offsets (dy, dx) in 0..2s."""

    hashes: np.ndarray  # (N, K) uint64
    thumbnails: np.ndarray  # (N, K, 64) float16
    centre: int  # the crop at offset (s, s): the image's query
    shift: int

    @property
    def query(self) -> np.ndarray:
        return self.hashes[:, self.centre]


def crop_features(images, max_shift: int, workers: int = 1, batch: int = 1024) -> CropFeatures:
    """Hashes and thumbnails that survive shifts, small crops and re-encoding.

    `images`: (N, C, H, W) uint8 pixels, or a list of such arrays (the splits, in order), read a
    batch at a time (memory maps stay on disk). Every image is seen through K = (2s + 1)^2 crops
    of size (H - 2s, W - 2s), one per offset (dy, dx) in 0..2s, s = min(max_shift, side // 8). A
    copy shifted by up to s pixels has a centre crop equal to one of the original's crops; a copy
    cropped a little and resized back differs only slightly in scale, which 8x8 low frequencies
    and thumbnails barely see. Batches are processed in `workers` threads (numpy releases the
    GIL). The result takes K * 136 bytes per image (25 crops: 3.4 kB).
    """
    from concurrent.futures import ThreadPoolExecutor

    parts = images if isinstance(images, list | tuple) else [images]
    count, (height, width) = sum(len(part) for part in parts), parts[0].shape[2:]
    shift = max(0, min(max_shift, height // 8, width // 8))
    offsets = [(dy, dx) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)]
    hashes = np.empty((count, len(offsets)), dtype=np.uint64)
    thumbnails = np.empty((count, len(offsets), DESCRIPTOR_SIDE**2), dtype=np.float16)
    jobs, first = [], 0
    for part in parts:
        jobs += [(part, start, first + start) for start in range(0, len(part), batch)]
        first += len(part)

    def one_batch(job) -> None:
        part, start, row = job
        pixels = np.ascontiguousarray(part[start : start + batch])
        grey = _grey(pixels)
        rows = slice(row, row + len(pixels))
        for k, (dy, dx) in enumerate(offsets):
            window = pixels[:, :, dy : dy + height - 2 * shift, dx : dx + width - 2 * shift]
            hashes[rows, k] = perceptual_hashes(window)
            thumbnails[rows, k] = _thumbnails(
                grey[:, dy : dy + height - 2 * shift, dx : dx + width - 2 * shift]
            )

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one_batch, jobs))
    return CropFeatures(hashes, thumbnails, offsets.index((shift, shift)), shift)


def shifted_distance(features: CropFeatures, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Bits between images first[i] and second[i]: either's query against the other's closest crop."""
    query, hashes = features.query, features.hashes
    distance = np.empty(len(first), dtype=np.int64)
    for start in range(0, len(first), 65536):  # bounded memory: 65,536 pairs x K crops at a time
        a, b = first[start : start + 65536], second[start : start + 65536]
        one = np.bitwise_count(query[a, None] ^ hashes[b]).min(axis=1)
        other = np.bitwise_count(query[b, None] ^ hashes[a]).min(axis=1)
        distance[start : start + 65536] = np.minimum(one, other)
    return distance


def shifted_similarity(features: CropFeatures, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Correlation of the thumbnails of images first[i] and second[i] at their best offset."""
    best = np.full(len(first), -1.0, dtype=np.float32)
    for start in range(0, len(first), 2048):  # 2048 pairs: 13 MB of thumbnails at a time
        a, b = first[start : start + 2048], second[start : start + 2048]
        thumbs, centre = features.thumbnails, features.centre
        one = np.einsum("nd,nkd->nk", thumbs[a, centre].astype(np.float32), thumbs[b].astype(np.float32))
        other = np.einsum("nd,nkd->nk", thumbs[b, centre].astype(np.float32), thumbs[a].astype(np.float32))
        best[start : start + 2048] = np.maximum(one.max(axis=1), other.max(axis=1))
    return best


def auto_thresholds(features: CropFeatures, seed: int = 0) -> tuple[int, float]:
    """Near-duplicate thresholds chosen from the data, from random pairs of distinct images
    (nearly all unrelated): (max bits, min similarity).

    Bits: half the 1st percentile of their pHash distances, within 2..4 (shifted and re-encoded
    copies sit 0-3 bits apart once aligned; more bits cost far more candidate comparisons).
    Similarity: the 99.99th percentile of their best-offset thumbnail correlation, within
    0.90..0.98. Small, look-alike images (8x8 digits) get strict thresholds, textured photos
    looser ones; the clamps keep tiny datasets, whose percentiles mean little, at sensible values.
    bench_dedup.py measures them.
    """
    count = len(features.hashes)
    if count < 2:
        return 2, 0.98
    rng = np.random.default_rng(seed)
    first = rng.integers(0, count, RANDOM_PAIRS)
    second = (first + rng.integers(1, count, RANDOM_PAIRS)) % count  # never the image itself
    bits = int(np.percentile(shifted_distance(features, first, second), 1) // 2)
    similarity = float(np.percentile(shifted_similarity(features, first, second), 99.99))
    return int(np.clip(bits, 2, 4)), round(float(np.clip(similarity, 0.90, 0.98)), 4)


def query_pairs(features: CropFeatures, max_distance: int, block: int = 1_000_000) -> np.ndarray:
    """Image pairs (i < j), as codes i * N + j, where one's query hash is within max_distance bits
    of one of the other's crop hashes.

    Pigeonhole multi-index search (Manku, Jain & Das Sarma, WWW 2007) between queries and crops
    only: cut the 64 bits into max_distance + 1 chunks; a query and a crop within max_distance
    bits agree exactly on at least one chunk, so per chunk only equal-key (query, crop) pairs
    are compared, `block` comparisons at a time.
    """
    count, crops = features.hashes.shape
    query, flat = features.query, features.hashes.ravel()
    owner = np.repeat(np.arange(count, dtype=np.int64), crops)
    chunks = min(max_distance + 1, 64)
    edges = np.linspace(0, 64, chunks + 1).astype(np.uint64)
    found = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(high - low)) - 1)
        crop_keys = (flat >> low) & mask
        order = np.argsort(crop_keys, kind="stable")
        sorted_keys = crop_keys[order]
        query_keys = (query >> low) & mask
        left = np.searchsorted(sorted_keys, query_keys, "left")
        counts = np.searchsorted(sorted_keys, query_keys, "right") - left
        ends = np.cumsum(counts)
        start = 0
        while start < count:  # queries in blocks of about `block` comparisons
            stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + block, "right")))
            stop = min(stop, count)
            n = counts[start:stop]
            if n.sum():
                images = np.repeat(np.arange(start, stop), n)
                offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(left[start:stop], n)
                held = order[offsets]
                close = np.bitwise_count(query[images] ^ flat[held]) <= max_distance
                first, second = images[close], owner[held[close]]
                other = first != second
                first, second = first[other], second[other]
                found.append(np.unique(np.minimum(first, second) * count + np.maximum(first, second)))
            start = stop
        found = [np.unique(np.concatenate(found))] if found else []  # a pair found by several chunks, once
    return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def near_pairs(features: CropFeatures, max_distance: int, min_similarity: float) -> tuple[np.ndarray, ...]:
    """Image pairs (i < j) whose hashes are within max_distance bits (query_pairs) and whose
    thumbnails correlate at least min_similarity at the best offset; with distance and similarity."""
    codes = query_pairs(features, max_distance)
    count = len(features.hashes)
    first, second = codes // count, codes % count
    similarity = shifted_similarity(features, first, second)
    keep = similarity >= min_similarity
    first, second = first[keep], second[keep]
    return first, second, shifted_distance(features, first, second), similarity[keep]


def duplicate_groups(digests: list[bytes], near: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Group label per image: images equal by content, or linked by a near pair (first, second).

    Content hashes are one node per distinct value, so large exact-duplicate sets cost nothing extra.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(digests)
    _, digest_group = np.unique(np.array(digests, dtype=object).astype("S16"), return_inverse=True)
    edges = [(np.arange(count), digest_group + count)]  # image -> its content hash node
    nodes = count + digest_group.max() + 1 if count else 0
    if near is not None:
        edges.append(near)
    rows = np.concatenate([a for a, _ in edges])
    cols = np.concatenate([b for _, b in edges])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    return labels[:count]


def clean_splits(
    arrays: dict, names: list[str], settings: dict, workers: int = 1, chosen: dict | None = None
) -> tuple[dict, list[dict]]:
    """Cleaned copies of the splits and one record per removed image.

    `settings`: near_duplicates (bool), near_duplicate_max_distance (bits or "auto"),
    near_duplicate_min_similarity (correlation or "auto"), near_duplicate_max_shift (pixels).
    `chosen`, if given, receives the thresholds used (the automatic ones resolved).
    """
    split_of, index_in_split = [], []
    for split in SPLIT_ORDER:
        size = len(arrays[f"{split}_y"])
        split_of += [split] * size
        index_in_split += list(range(size))
    pixel_max = int(arrays.get("pixel_max", 255))
    labels = np.concatenate([arrays[f"{split}_y"] for split in SPLIT_ORDER])
    ids = np.concatenate([arrays[f"{split}_id"] for split in SPLIT_ORDER])
    digests, pixels = [], []
    for split in SPLIT_ORDER:  # split by split: stored uint8 splits are not copied
        pixels.append(stored_uint8(arrays[f"{split}_x"], pixel_max))
        digests += content_hashes(pixels[-1])
    near, features = None, None
    if settings["near_duplicates"] and len(labels):
        features = crop_features(pixels, settings["near_duplicate_max_shift"], workers)
        auto_bits, auto_similarity = auto_thresholds(features)
        max_distance = settings["near_duplicate_max_distance"]
        min_similarity = settings["near_duplicate_min_similarity"]
        max_distance = auto_bits if max_distance == "auto" else int(max_distance)
        min_similarity = auto_similarity if min_similarity == "auto" else float(min_similarity)
        first, second, _, _ = near_pairs(features, max_distance, min_similarity)
        near = (first, second)
        log.info(
            "near duplicates: %d pairs within %d bits and correlation >= %.3f (max shift %d px)",
            len(first), max_distance, min_similarity, features.shift,
        )  # fmt: skip
        if chosen is not None:
            chosen |= {
                "max_distance": max_distance,
                "min_similarity": min_similarity,
                "max_shift": features.shift,
            }
    groups = duplicate_groups(digests, near)

    def closeness(member, matched) -> dict:
        if features is None:
            return {"hash_distance": None, "similarity": None}
        pair = np.array([member]), np.array([matched])
        return {
            "hash_distance": int(shifted_distance(features, *pair)[0]),
            "similarity": round(float(shifted_similarity(features, *pair)[0]), 4),
        }

    def describe(i):
        return {
            "split": split_of[i],
            "index": index_in_split[i],
            "item": names[ids[i]],
            "label": int(labels[i]),
        }

    removed, drop = [], np.zeros(len(labels), dtype=bool)
    order = np.argsort(groups, kind="stable")  # members of a group together, in split order
    boundaries = np.flatnonzero(np.diff(groups[order])) + 1
    for members in np.split(order, boundaries):
        if len(members) < 2:
            continue
        keep = members[0]
        conflict = len(set(labels[members].tolist())) > 1
        for member in members if conflict else members[1:]:
            matched = members[1] if member == keep else keep
            if conflict:
                reason = "conflicting_labels"
            elif split_of[member] != split_of[keep]:
                reason = "leakage"
            elif digests[member] == digests[keep]:
                reason = "exact_duplicate"
            else:
                reason = "near_duplicate"
            record = {
                **describe(member),
                "reason": reason,
                **{f"matched_{key}": value for key, value in describe(matched).items()},
                **closeness(member, matched),
            }
            removed.append(record)
            drop[member] = True
    cleaned, offset = {}, 0
    for split in SPLIT_ORDER:
        size = len(arrays[f"{split}_y"])
        keep_mask = ~drop[offset : offset + size]
        for key in ("x", "y", "id"):
            cleaned[f"{split}_{key}"] = arrays[f"{split}_{key}"][keep_mask]
        offset += size
    if "pixel_max" in arrays:
        cleaned["pixel_max"] = np.asarray(pixel_max)
    return cleaned, removed


def cleaning_report(before: dict, after: dict, removed: list[dict], settings: dict, examples: int) -> dict:
    """Counts per reason and split, class balance before/after and a few examples per reason."""
    report = {
        "settings": settings,
        "removed_total": len(removed),
        "removed_by_reason": {reason: 0 for reason in REASONS},
        "examples": {},
        "before": {},
        "after": {},
    }
    for record in removed:
        report["removed_by_reason"][record["reason"]] += 1
        shown = report["examples"].setdefault(record["reason"], [])
        if len(shown) < examples:
            shown.append(record)
    num_classes = int(max(int(before[f"{s}_y"].max(initial=-1)) for s in SPLIT_ORDER)) + 1
    for name, arrays in (("before", before), ("after", after)):
        for split in SPLIT_ORDER:
            counts = np.bincount(arrays[f"{split}_y"], minlength=num_classes)
            report[name][split] = {"count": int(counts.sum()), "class_counts": [int(c) for c in counts]}
    return report
