"""Find and drop bad data: exact and near duplicates, train/test leaks, conflicting labels.

Works on the decoded splits of a prepared dataset (files that did not decode were already
listed by the loader). Every removed image is returned with its reason and the image it matched,
so nothing disappears silently.

Exact duplicates are found by a content hash of the 8-bit pixels. Near duplicates (shifted by a
pixel or two, cropped a little, re-encoded, brightened: the copies real datasets contain, ciFAIR,
Barz & Denzler 2020) in two steps. Candidates: every image is hashed (64-bit pHash, Zauner 2010)
through windows that cover the edits a copy gets, every shift within `near_duplicate_max_shift`
pixels and every crop of up to a tenth of the side resized back (axis_windows), and an image's
centre-crop hash is matched against every window hash of the others by Hamming distance
(multi-index search, hamming.close_pairs). Verification: the candidates' 8x8 grey thumbnails must
correlate at the windows where their hashes agree best. Both thresholds are chosen from the data
by default (auto_thresholds), from the distances between random pairs of images. A candidate is a
copy only where the two grey images, aligned over small shifts and crop-and-resizes, correlate
within a threshold calibrated on copies made from the dataset's own images (copy_threshold); the
other candidates are look-alikes (distinct samples that sit close), reported and removed only when
asked.
Removal goes image by image in split order train, val, test: an image is removed only as a copy of
an image that stays, and names it, so a test image that copies a training image is the one removed
(leakage); copies whose labels disagree both go. bench/bench_dedup.py measures precision and recall.
"""

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from joulebench.data import hamming

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


def _area_weights(size_in: int, size_out: int, start: float = 0.0, length: float | None = None) -> np.ndarray:
    """(size_out, size_in) box-filter weights: each output pixel averages the input it covers, of
    the window [start, start + length) of the axis (the whole axis by default; fractional edges
    weigh the pixels they cut by the part covered)."""
    length = size_in - start if length is None else length
    edges = np.linspace(start, start + length, size_out + 1)
    pixels = np.arange(size_in)
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    weights = np.maximum(overlap, 0.0)
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
    """All index pairs (i < j) of hashes that differ in at most max_distance bits (hamming's
    multi-index search, far below the N^2 of comparing all pairs)."""
    first, second = hamming.close_pairs(hashes, hashes, max_distance)
    keep = first < second
    return first[keep], second[keep]


DESCRIPTOR_SIDE = 8  # windows are compared as 8x8 grey thumbnails: 64 numbers each
RANDOM_PAIRS = 20000  # pairs of random images that set the automatic thresholds
BEST_WINDOWS = 4  # a pair's thumbnails are compared at the windows where their hashes agree best
VERIFY_SIDE = 16  # copies are aligned at up to 32x32 and compared area-resized to at most 16x16
ALIGN_SIDE = 32
# Crop hashes keep their 64 bits interleaved (every third frequency in each third of the word): each
# chunk of the multi-index search then holds low and high frequencies alike, and the lowest ones,
# much the same in every image, no longer crowd one chunk with unrelated matches (3x fewer).
CROP_BIT_ORDER = np.concatenate([np.arange(chunk, 64, hamming.CHUNKS) for chunk in range(hamming.CHUNKS)])


def crop_most(side: int) -> int:
    """Most pixels a copy loses a side to a crop that is resized back: a tenth of the side."""
    return max(1, round(side / 10))


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
        [_area_weights(side_out, size_out, start * ratio, length * ratio) for start, length in windows]
    )


def _axis_hash_maps(side: int, windows: list) -> np.ndarray:
    """(len(windows) * 8, side): each window area-resized to 32 pixels, then its 8 lowest DCT
    frequencies, the pHash of the window along this axis."""
    dct = _dct_matrix(HASH_INPUT)[:HASH_SIZE]
    return (dct @ _window_maps(side, windows, HASH_INPUT)).reshape(-1, side).astype(np.float32)


def verify_images(parts: list, side: int, batch: int = 1024) -> np.ndarray:
    """(N, S, S) uint8 grey images, S = side, of the (N, C, H, W) uint8 parts, area-resized."""
    out = np.empty((sum(len(part) for part in parts), side, side), dtype=np.uint8)
    row = 0
    for part in parts:
        for start in range(0, len(part), batch):
            grey = _grey(np.ascontiguousarray(part[start : start + batch]))
            out[row : row + len(grey)] = _to_verify(grey, side)
            row += len(grey)
    return out


def _to_verify(grey: np.ndarray, side: int) -> np.ndarray:
    height, width = grey.shape[1:]
    return np.rint(_area_weights(height, side) @ grey @ _area_weights(width, side).T)


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
        grey = _grey(np.ascontiguousarray(part[start : start + batch]))
        n = len(grey)
        verify[row : row + n] = _to_verify(grey, side)
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
    most = crop_most(side)
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
    most = crop_most(side)
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
        most = crop_most(min(height, width))
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
    verify = verify_images([originals, copies], min(*originals.shape[2:], ALIGN_SIDE))
    count = len(originals)
    distances = copy_distances(verify, np.arange(count), np.arange(count, 2 * count), shift)
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
