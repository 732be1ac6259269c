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
(auto_thresholds), from the distances between random pairs of images. A candidate is a copy only
where the two grey images, aligned over small shifts and crop-and-resizes, correlate within a
threshold calibrated on copies made from the dataset's own images (copy_threshold); the other
candidates are look-alikes (distinct samples that sit close), reported and removed only when asked.
Removal goes image by image in split order train, val, test: an image is removed only as a copy of
an image that stays, and names it, so a test image that copies a training image is the one removed
(leakage); copies whose labels disagree both go. bench/bench_dedup.py measures precision and recall.
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
    "lookalike",
)
# Columns of removed.csv; files the loader could not use have split "source" and a detail.
REMOVED_COLUMNS = [
    "split", "index", "item", "label", "reason", "detail",
    "matched_split", "matched_index", "matched_item", "matched_label", "hash_distance", "similarity",
    "copy_distance",
]  # fmt: skip
HASH_SIZE = 8  # pHash keeps the 8x8 lowest DCT frequencies: a 64-bit hash
HASH_INPUT = 32  # ... of the image resized to 32x32 grey, as ImageHash does


# What cleaning imports (the copy threshold's calibration re-encodes images with PIL, whose first
# save loads these format plugins), for clean_dataset to import before its energy window opens.
WORK_MODULES = (
    "PIL.Image",
    *(f"PIL.{name}ImagePlugin" for name in ("Bmp", "Gif", "Jpeg", "Ppm", "Png")),
)


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
ZOOM_STEPS = (1, 2)  # zoomed windows, per 16 pixels of side, for copies cropped and resized back
VERIFY_SIDE = 16  # copies are aligned at up to 32x32 and compared area-resized to at most 16x16
ALIGN_SIDE = 32


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
    """Per image: the pHash and thumbnail of each of K windows (crops at offsets (dy, dx) in 0..2s,
    then smaller, zoomed-in windows), and the grey image at the size copies are verified at."""

    hashes: np.ndarray  # (N, K) uint64
    thumbnails: np.ndarray  # (N, K, 64) float16
    centre: int  # the crop at offset (s, s): the image's query
    shift: int
    verify: np.ndarray | None = None  # (N, S, S) uint8 grey, S = min(side, ALIGN_SIDE)

    @property
    def query(self) -> np.ndarray:
        return self.hashes[:, self.centre]


def crop_windows(height: int, width: int, shift: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every window hashed: the (2s + 1)^2 crops of size
    (H - 2s, W - 2s), then, for copies cropped by a few pixels and resized back (a zoom the crops
    do not cover), windows z = 1 and 2 pixels (per 16 of side) smaller on each side, at the same
    offsets around the centre."""
    windows = [
        (dy, dx, height - 2 * shift, width - 2 * shift)
        for dy in range(2 * shift + 1)
        for dx in range(2 * shift + 1)
    ]
    for step in ZOOM_STEPS:
        zoom_y, zoom_x = max(1, round(step * height / 16)), max(1, round(step * width / 16))
        if height - 2 * shift - 2 * zoom_y < 4 or width - 2 * shift - 2 * zoom_x < 4:
            continue
        windows += [
            (zoom_y + dy, zoom_x + dx, height - 2 * shift - 2 * zoom_y, width - 2 * shift - 2 * zoom_x)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
        ]
    return windows


def crop_features(images, max_shift: int, workers: int = 1, batch: int = 1024) -> CropFeatures:
    """Hashes and thumbnails that survive shifts, small crops and re-encoding.

    `images`: (N, C, H, W) uint8 pixels, or a list of such arrays (the splits, in order), read a
    batch at a time (memory maps stay on disk). Every image is seen through the windows of
    crop_windows, s = min(max_shift, side // 8): a copy shifted by up to s pixels has a centre
    crop equal to one of the original's crops; a copy cropped and resized back has a centre crop
    close to one of the original's zoomed windows. Batches are processed in `workers` threads
    (numpy releases the GIL). The result takes K * 136 bytes per image.
    """
    from concurrent.futures import ThreadPoolExecutor

    parts = images if isinstance(images, list | tuple) else [images]
    count, (height, width) = sum(len(part) for part in parts), parts[0].shape[2:]
    shift = max(0, min(max_shift, height // 8, width // 8))
    windows = crop_windows(height, width, shift)
    side = min(height, width, ALIGN_SIDE)
    hashes = np.empty((count, len(windows)), dtype=np.uint64)
    thumbnails = np.empty((count, len(windows), DESCRIPTOR_SIDE**2), dtype=np.float16)
    verify = np.empty((count, side, side), dtype=np.uint8)
    verify_rows, verify_cols = _area_weights(height, side), _area_weights(width, side)
    jobs, first = [], 0
    for part in parts:
        jobs += [(part, start, first + start) for start in range(0, len(part), batch)]
        first += len(part)

    def one_batch(job) -> None:
        part, start, row = job
        pixels = np.ascontiguousarray(part[start : start + batch])
        grey = _grey(pixels)
        rows = slice(row, row + len(pixels))
        verify[rows] = np.rint(verify_rows @ grey @ verify_cols.T)
        for k, (top, left, h, w) in enumerate(windows):
            hashes[rows, k] = perceptual_hashes(pixels[:, :, top : top + h, left : left + w])
            thumbnails[rows, k] = _thumbnails(grey[:, top : top + h, left : left + w])

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one_batch, jobs))
    centre = windows.index((shift, shift, height - 2 * shift, width - 2 * shift))
    return CropFeatures(hashes, thumbnails, centre, shift, verify)


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


def _resample_matrix(side: int, top: float, bottom: float) -> np.ndarray:
    """(side, side) linear interpolation that maps an image axis to the same axis with `top`
    pixels cut at the start and `bottom` at the end, stretched back to `side` (negative: a shift
    outwards; the border repeats the edge), as a crop-and-resize or a shift of a copy does."""
    positions = top + (np.arange(side) + 0.5) * (side - top - bottom) / side - 0.5
    positions = np.clip(positions, 0, side - 1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, side - 1)
    weight = positions - low
    matrix = np.zeros((side, side))
    matrix[np.arange(side), low] += 1 - weight
    matrix[np.arange(side), high] += weight
    return matrix


def copy_alignments(side: int, shift: int) -> np.ndarray:
    """(F, V, side) per-axis alignments a copy may have, each followed by the area resize to the
    verification size V: cut `top` and `bottom` pixels, each in -s..c (c = a tenth of the side),
    with top + bottom in 0..2c (shifts by up to s pixels, crops of up to c pixels a side resized
    back, and both). Aligning at full size and then averaging is what storing a copy does."""
    most = max(1, round(side / 10))
    to_verify = _area_weights(side, min(side, VERIFY_SIDE))
    cuts = [
        (top, bottom)
        for top in range(-shift, most + 1)
        for bottom in range(-shift, most + 1)
        if 0 <= top + bottom <= 2 * most
    ]
    return np.stack([to_verify @ _resample_matrix(side, top, bottom) for top, bottom in cuts])


def _normalised(images: np.ndarray) -> np.ndarray:
    """Zero mean, unit length over the last two axes: a dot product is then a correlation."""
    images = images - images.mean(axis=(-2, -1), keepdims=True)
    return images / np.maximum(np.sqrt((images**2).sum(axis=(-2, -1), keepdims=True)), 1e-6)


def copy_distances(
    verify: np.ndarray, first: np.ndarray, second: np.ndarray, shift: int, batch: int = 32
) -> np.ndarray:
    """1 - the best correlation between image first[i] brought into alignment with second[i] and
    second[i] (either way round), over copy_alignments in both axes, away from the border.

    A copy (one picture shifted, cropped and resized, re-encoded) lines up with its original up
    to interpolation and compression noise; two drawings of one digit do not line up everywhere
    at any alignment. `verify`: (N, S, S) grey images (CropFeatures.verify).
    """
    side = verify.shape[-1]
    alignments = copy_alignments(side, shift).astype(np.float32)  # (F, V, S)
    count, small = len(alignments), alignments.shape[1]
    margin = -(-shift * small // side) if small > 4 else 0
    window = slice(margin, small - margin)
    to_verify = alignments[_identity_index(side, shift)]
    flat_columns = alignments.transpose(2, 0, 1).reshape(side, -1)  # (S, F * V)
    best = np.full(len(first), -1.0, dtype=np.float32)
    for start in range(0, len(first), batch):
        a = verify[first[start : start + batch]].astype(np.float32)
        b = verify[second[start : start + batch]].astype(np.float32)
        for moved, fixed in ((a, b), (b, a)):
            rows = np.matmul(alignments[None], moved[:, None])  # (n, F, V, S)
            both = (rows.reshape(-1, side) @ flat_columns).reshape(len(a), count, small, count, small)
            both = both[:, :, window][..., window].transpose(0, 1, 3, 2, 4)  # (n, F, F, w, w)
            target = to_verify @ fixed @ to_verify.T
            target = _normalised(target[:, window, window])
            pixels = target.shape[-1] ** 2
            sums = both.sum(axis=(-2, -1))
            squares = np.einsum("nfgil,nfgil->nfg", both, both)
            cross = np.einsum("nfgil,nil->nfg", both, target)  # target has zero mean
            spread = np.sqrt(np.maximum(squares - sums**2 / pixels, 1e-12))
            correlation = (cross / spread).reshape(len(a), -1).max(axis=1)
            best[start : start + batch] = np.maximum(best[start : start + batch], correlation)
    return 1.0 - best


def _identity_index(side: int, shift: int) -> int:
    """Position of the plain area resize (no cut) in copy_alignments."""
    most = max(1, round(side / 10))
    cuts = [
        (t, b) for t in range(-shift, most + 1) for b in range(-shift, most + 1) if 0 <= t + b <= 2 * most
    ]
    return cuts.index((0, 0))


CALIBRATION_IMAGES = 256  # images edited into copies to set the copy threshold
CALIBRATION_MARGIN = 1.5  # the threshold: this times the 99th percentile of their distances
COPY_FLOOR = 0.001  # ... and never below this (lossless copies sit at 0)


def synthetic_copy(image: np.ndarray, pixel_max: int, shift: int, rng) -> np.ndarray:
    """One (C, H, W) uint8 image edited as copies in datasets are: shifted by up to `shift` pixels
    (edge repeated), cropped by up to a tenth of the side a side and resized back, or re-encoded
    as JPEG (quality 75) and shifted, then stored at the dataset's `pixel_max` levels again."""
    import io as bytes_io

    from PIL import Image

    channels, height, width = image.shape
    pil = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0))
    kind = rng.integers(3)
    if kind == 1:
        most = max(1, round(min(height, width) / 10))
        top, left, bottom, right = (int(v) for v in rng.integers(0, most + 1, 4))
        if top + left + bottom + right == 0:
            top = 1
        pil = pil.crop((left, top, width - right, height - bottom)).resize((width, height), Image.BILINEAR)
    else:
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2)) if shift else (0, 0)
        pixels = np.asarray(pil)
        pad = ((shift, shift), (shift, shift)) + ((0, 0),) * (pixels.ndim - 2)
        pixels = np.pad(pixels, pad, mode="edge")[
            shift - dy : shift - dy + height, shift - dx : shift - dx + width
        ]
        pil = Image.fromarray(np.ascontiguousarray(pixels))
        if kind == 2 or not (dy or dx):
            buffer = bytes_io.BytesIO()
            pil.save(buffer, "JPEG", quality=75)
            buffer.seek(0)
            pil = Image.open(buffer).convert(pil.mode)
    edited = np.asarray(pil).reshape(height, width, channels).transpose(2, 0, 1)
    if pixel_max != 255:  # stored at pixel_max + 1 levels, as the dataset's own images are
        edited = np.rint(np.rint(edited * (pixel_max / 255.0)) * (255.0 / pixel_max))
    return edited.astype(np.uint8)


def copy_threshold(parts: list, pixel_max: int, shift: int, seed: int = 0) -> float:
    """Largest copy distance for a pair to be one image and its copy, measured on copies made
    here: CALIBRATION_IMAGES images of the data, each edited once (synthetic_copy), then
    CALIBRATION_MARGIN times the 99th percentile of their distances to their originals. Copies
    already in the data play no part, so the threshold does not depend on how many there are."""
    pixels = np.concatenate([np.asarray(part[:CALIBRATION_IMAGES]) for part in parts])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pixels), size=min(CALIBRATION_IMAGES, len(pixels)), replace=False)
    originals = pixels[chosen]
    copies = np.stack([synthetic_copy(image, pixel_max, shift, rng) for image in originals])
    features = crop_features(np.concatenate([originals, copies]), shift)
    count = len(originals)
    distances = copy_distances(features.verify, np.arange(count), np.arange(count, 2 * count), features.shift)
    return round(max(COPY_FLOOR, CALIBRATION_MARGIN * float(np.percentile(distances, 99))), 5)


LOOKALIKE_COLUMNS = [
    "split", "index", "item", "label", "other_split", "other_index", "other_item", "other_label",
    "hash_distance", "similarity", "copy_distance", "across_splits", "removed",
]  # fmt: skip


def _links(features, digests, settings, chosen, parts, pixel_max) -> tuple[list, list]:
    """Near pairs (i < j, distinct content) split into copies and look-alikes, each as
    (i, j, hash_distance, similarity, copy_distance)."""
    auto_bits, auto_similarity = auto_thresholds(features)
    max_distance = settings["near_duplicate_max_distance"]
    min_similarity = settings["near_duplicate_min_similarity"]
    max_copy = settings.get("copy_max_distance", "auto")
    max_distance = auto_bits if max_distance == "auto" else int(max_distance)
    min_similarity = auto_similarity if min_similarity == "auto" else float(min_similarity)
    max_copy = copy_threshold(parts, pixel_max, features.shift) if max_copy == "auto" else float(max_copy)
    first, second, bits, similarity = near_pairs(features, max_distance, min_similarity)
    distinct = np.array([digests[i] != digests[j] for i, j in zip(first, second, strict=True)], dtype=bool)
    first, second, bits, similarity = first[distinct], second[distinct], bits[distinct], similarity[distinct]
    distance = copy_distances(features.verify, first, second, features.shift)
    rows = list(
        zip(
            first.tolist(),
            second.tolist(),
            bits.tolist(),
            similarity.tolist(),
            distance.tolist(),
            strict=True,
        )
    )
    copies = [row for row in rows if row[4] <= max_copy]
    lookalikes = [row for row in rows if row[4] > max_copy]
    log.info(
        "near pairs within %d bits and correlation >= %.3f: %d copies (copy distance <= %.4f), "
        "%d look-alikes (max shift %d px)",
        max_distance, min_similarity, len(copies), max_copy, len(lookalikes), features.shift,
    )  # fmt: skip
    if chosen is not None:
        chosen |= {
            "max_distance": max_distance,
            "min_similarity": min_similarity,
            "max_shift": features.shift,
            "copy_max_distance": max_copy,
        }
    return copies, lookalikes


def _matches(count: int, digests: list, links: list) -> dict[int, list]:
    """Every image's links as (other, hash_distance, similarity, copy_distance): the near links,
    and each image of identical content linked to the first image with that content."""
    matches = {i: [] for i in range(count)}
    first_with = {}
    for i, digest in enumerate(digests):
        if digest in first_with:
            j = first_with[digest]
            matches[i].append((j, 0, 1.0, 0.0))
            matches[j].append((i, 0, 1.0, 0.0))
        else:
            first_with[digest] = i
    for i, j, bits, similarity, distance in links:
        matches[i].append((j, bits, similarity, distance))
        matches[j].append((i, bits, similarity, distance))
    return matches


def clean_splits(
    arrays: dict,
    names: list[str],
    settings: dict,
    workers: int = 1,
    chosen: dict | None = None,
    lookalikes: list | None = None,
) -> tuple[dict, list[dict]]:
    """Cleaned copies of the splits and one record per removed image.

    `settings`: near_duplicates (bool), near_duplicate_max_distance (bits or "auto"),
    near_duplicate_min_similarity (correlation or "auto"), near_duplicate_max_shift (pixels),
    copy_max_distance (or "auto", copy_threshold), remove_lookalikes (bool).
    `chosen`, if given, receives the thresholds used (the automatic ones resolved); `lookalikes`,
    if given, one record per look-alike pair (LOOKALIKE_COLUMNS).

    Removal is image by image, in split order train, val, test: an image goes when it is a copy
    (or, with remove_lookalikes, a look-alike) of an earlier image that stays, and names that
    image, with the distances between the two. Copies whose labels disagree both go.
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
    copies, similar = [], []
    if settings["near_duplicates"] and len(labels):
        features = crop_features(pixels, settings["near_duplicate_max_shift"], workers)
        copies, similar = _links(features, digests, settings, chosen, pixels, pixel_max)
    remove_similar = bool(settings.get("remove_lookalikes", False))
    matches = _matches(len(labels), digests, copies + (similar if remove_similar else []))
    lookalike_pairs = {(i, j) for i, j, *_ in similar}

    def describe(i):
        return {
            "split": split_of[i],
            "index": index_in_split[i],
            "item": names[ids[i]],
            "label": int(labels[i]),
        }

    def record(member, reason, match) -> dict:
        other, bits, similarity, distance = match
        detail = ""
        if reason == "leakage":
            kind = "look-alike" if (min(member, other), max(member, other)) in lookalike_pairs else "copy"
            detail = f"{kind} of an image kept in {split_of[other]}"
        return {
            **describe(member),
            "reason": reason,
            "detail": detail,
            **{f"matched_{key}": value for key, value in describe(other).items()},
            "hash_distance": int(bits),
            "similarity": round(float(similarity), 4),
            "copy_distance": round(float(distance), 5),
        }

    removed, drop = [], np.zeros(len(labels), dtype=bool)
    for i in range(len(labels)):  # copies that disagree on the label: neither can be trusted
        conflicts = [m for m in matches[i] if labels[m[0]] != labels[i]]
        if conflicts:
            removed.append(record(i, "conflicting_labels", min(conflicts, key=lambda m: m[3])))
            drop[i] = True
    for i in range(len(labels)):  # in split order: a match to an earlier image that stays
        kept = [m for m in matches[i] if m[0] < i and not drop[m[0]]]
        if drop[i] or not kept:
            continue
        match = min(kept, key=lambda m: (m[3], m[0]))
        other = match[0]
        if split_of[i] != split_of[other]:
            reason = "leakage"
        elif digests[i] == digests[other]:
            reason = "exact_duplicate"
        elif (min(i, other), max(i, other)) in lookalike_pairs:
            reason = "lookalike"
        else:
            reason = "near_duplicate"
        removed.append(record(i, reason, match))
        drop[i] = True
    if lookalikes is not None:
        for i, j, bits, similarity, distance in similar:
            lookalikes.append({
                **describe(i),
                **{f"other_{key}": value for key, value in describe(j).items()},
                "hash_distance": int(bits), "similarity": round(float(similarity), 4),
                "copy_distance": round(float(distance), 5),
                "across_splits": split_of[i] != split_of[j], "removed": bool(drop[i] or drop[j]),
            })  # fmt: skip
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


def lookalike_frame(lookalikes: list[dict]):
    """lookalikes.csv's table: one row per pair of distinct images within the near-duplicate
    thresholds that are not one picture (copy distance above copy_max_distance)."""
    import pandas as pd

    return pd.DataFrame(lookalikes, columns=LOOKALIKE_COLUMNS)


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
