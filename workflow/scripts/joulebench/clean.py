"""Find and drop bad data: exact and near duplicates, train/test leaks, conflicting labels.

Works on the decoded splits of a prepared dataset (files that did not decode were already
listed by the loader). Every removed image is returned with its reason and the image it matched,
so nothing disappears silently.

Duplicates are found by two hashes of the 8-bit pixels: a content hash (exact duplicates) and a
perceptual hash, pHash (Zauner 2010, as ImageHash computes it), compared by Hamming distance
(near duplicates: re-encoded, slightly brightened or resized copies). Images linked by either
hash form a group (connected components); a group whose labels disagree is removed whole,
otherwise its first member is kept, in split order train, val, test, so a test image that copies
a training image is the one removed (leakage).
"""

import hashlib
import logging

import numpy as np

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")
REASONS = (
    "unreadable",
    "wrong_size",
    "conflicting_labels",
    "leakage",
    "exact_duplicate",
    "near_duplicate",
)
# Columns of removed.csv; files the loader could not use have split "source" and a detail.
REMOVED_COLUMNS = [
    "split", "index", "item", "label", "reason", "detail",
    "matched_split", "matched_index", "matched_item", "matched_label", "hash_distance",
]  # fmt: skip
HASH_SIZE = 8  # pHash keeps the 8x8 lowest DCT frequencies: a 64-bit hash
HASH_INPUT = 32  # ... of the image resized to 32x32 grey, as ImageHash does


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


def duplicate_groups(digests: list[bytes], phashes: np.ndarray, max_distance: int | None) -> np.ndarray:
    """Group label per image: images equal by content, or within max_distance bits by pHash.

    Hashes are compared once per distinct value, so large exact-duplicate sets cost nothing extra.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(digests)
    _, digest_group = np.unique(np.array(digests, dtype=object).astype("S16"), return_inverse=True)
    edges = [(np.arange(count), digest_group + count)]  # image -> its content hash node
    nodes = count + digest_group.max() + 1 if count else 0
    if max_distance is not None and count:
        unique_hashes, hash_group = np.unique(phashes, return_inverse=True)
        edges.append((np.arange(count), hash_group + nodes))  # image -> its pHash node
        first, second = hamming_pairs(unique_hashes, max_distance)
        edges.append((first + nodes, second + nodes))  # near pHash values
        nodes += len(unique_hashes)
    rows = np.concatenate([a for a, _ in edges])
    cols = np.concatenate([b for _, b in edges])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(nodes, nodes))
    _, labels = connected_components(graph, directed=False)
    return labels[:count]


def clean_splits(arrays: dict, names: list[str], settings: dict) -> tuple[dict, list[dict]]:
    """Cleaned copies of the splits and one record per removed image.

    `settings`: near_duplicates (bool), near_duplicate_max_distance (bits).
    """
    split_of, index_in_split = [], []
    for split in SPLIT_ORDER:
        size = len(arrays[f"{split}_y"])
        split_of += [split] * size
        index_in_split += list(range(size))
    pixel_max = int(arrays.get("pixel_max", 255))
    pixels = np.concatenate([stored_uint8(arrays[f"{split}_x"], pixel_max) for split in SPLIT_ORDER])
    labels = np.concatenate([arrays[f"{split}_y"] for split in SPLIT_ORDER])
    ids = np.concatenate([arrays[f"{split}_id"] for split in SPLIT_ORDER])
    digests = content_hashes(pixels)
    phashes = perceptual_hashes(pixels)
    max_distance = settings["near_duplicate_max_distance"] if settings["near_duplicates"] else None
    groups = duplicate_groups(digests, phashes, max_distance)

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
                "hash_distance": int(np.bitwise_count(phashes[member] ^ phashes[matched])),
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
