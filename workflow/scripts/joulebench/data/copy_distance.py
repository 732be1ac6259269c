"""What a copy is: one picture shifted, cropped and resized back, or re-encoded. How far two images
are from being one picture (copy_distances: the best correlation over the alignments a copy may
have), and the largest distance a copy has, calibrated on copies made from the dataset's own
images (copy_threshold). Every pair of a small set within a margin of it (close_copies), and which
close pairs are copies: those whose group sits far from everything else (isolated_copies).
"""

import numpy as np

from joulebench.data.image_hash import ALIGN_SIDE, area_weights, verify_images

VERIFY_SIDE = 16  # aligned copies are compared area-resized to at most 16x16
CALIBRATION_IMAGES = 256  # images edited into copies to set the copy threshold
CALIBRATION_MARGIN = 1.5  # the threshold: this times the 99th percentile of their distances
COPY_FLOOR = 0.001  # ... and never below this (lossless copies sit at 0)
# A group of copies is one picture only where its links are at most this fraction of the distance
# from the group to the nearest image outside it: a picture and its copies sit far closer to each
# other than to anything else, distinct drawings in a crowd (the 1s of the digits) do not.
COPY_ISOLATION = 0.25


def crop_most(side: int) -> int:
    """Most pixels a copy loses a side to a crop that is resized back: a tenth of the side."""
    return max(1, round(side / 10))


def copy_cuts(side: int, shift: int) -> list[tuple[int, int]]:
    """(top, bottom) pixels a copy may have cut along an axis of `side` pixels, each in -s..c
    (c = crop_most(side); negative: a shift outwards), with top + bottom in 0..2c."""
    most = crop_most(side)
    return [
        (top, bottom)
        for top in range(-shift, most + 1)
        for bottom in range(-shift, most + 1)
        if 0 <= top + bottom <= 2 * most
    ]


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
    """(F, V, side) per-axis alignments a copy may have (copy_cuts: shifts by up to s pixels, crops
    of up to a tenth of the side a side resized back, and both), each followed by the area resize
    to the verification size V. Aligning at full size and then averaging is what storing a copy
    does."""
    to_verify = area_weights(side, min(side, VERIFY_SIDE))
    return np.stack(
        [to_verify @ _resample_matrix(side, top, bottom) for top, bottom in copy_cuts(side, shift)]
    )


def _normalised(images: np.ndarray) -> np.ndarray:
    """Zero mean, unit length over the last axis: a dot product is then a correlation."""
    images = images - images.mean(axis=-1, keepdims=True)
    return images / np.maximum(np.sqrt((images**2).sum(axis=-1, keepdims=True)), 1e-6)


def _windowed_alignments(side: int, shift: int) -> tuple[np.ndarray, int]:
    """copy_alignments away from the border a shift uncovers, (F, w, S), and the index of the
    identity (no cut)."""
    alignments = copy_alignments(side, shift).astype(np.float32)  # (F, V, S)
    small = alignments.shape[1]
    margin = -(-shift * small // side) if small > 4 else 0
    return alignments[:, margin : small - margin], copy_cuts(side, shift).index((0, 0))


def _views(images: np.ndarray, shift: int) -> np.ndarray:
    """(n, K, P) every alignment of copy_alignments in both axes (K = F^2) of (n, S, S) grey
    images, away from the border (P pixels), each with zero mean and unit length."""
    side = images.shape[-1]
    alignments, _ = _windowed_alignments(side, shift)
    count, width = alignments.shape[:2]
    flat_columns = alignments.transpose(2, 0, 1).reshape(side, -1)  # (S, F * w)
    rows = np.matmul(alignments[None], images.astype(np.float32)[:, None])  # (n, F, w, S)
    both = (rows.reshape(-1, side) @ flat_columns).reshape(len(images), count, width, count, width)
    return _normalised(both.transpose(0, 1, 3, 2, 4).reshape(len(images), count * count, width * width))


def _as_is(images: np.ndarray, shift: int) -> np.ndarray:
    """(n, P) the identity view of _views: each image uncut, away from the border."""
    alignments, identity = _windowed_alignments(images.shape[-1], shift)
    same = alignments[identity]
    return _normalised((same @ images.astype(np.float32) @ same.T).reshape(len(images), -1))


def aligned_search_cost(count: int, side: int, shift: int) -> float:
    """Multiply-adds close_copies spends on `count` images of `side` pixels: every image at every
    alignment against every other."""
    views = _views(np.zeros((1, side, side)), shift)
    return float(count) ** 2 * views.shape[1] * views.shape[2]


def copy_distances(
    verify: np.ndarray, first: np.ndarray, second: np.ndarray, shift: int, batch: int = 32
) -> np.ndarray:
    """1 - the best correlation between image first[i] brought into alignment with second[i] and
    second[i] (either way round), over copy_alignments in both axes, away from the border.

    A copy (one picture shifted, cropped and resized, re-encoded) lines up with its original up
    to interpolation and compression noise; two drawings of one digit do not line up everywhere
    at any alignment. `verify`: (N, S, S) grey images (CropFeatures.verify).
    """
    best = np.full(len(first), -1.0, dtype=np.float32)
    for start in range(0, len(first), batch):
        pair = slice(start, start + batch)
        a, b = verify[first[pair]], verify[second[pair]]
        for moved, fixed in ((a, b), (b, a)):
            correlation = np.einsum("nkp,np->nk", _views(moved, shift), _as_is(fixed, shift)).max(axis=1)
            best[pair] = np.maximum(best[pair], correlation)
    return 1.0 - best


def close_copies(
    verify: np.ndarray, shift: int, max_distance: float, batch_values: int = 2**24
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of images within max_distance of copy distance, compared exhaustively:
    each image at every alignment against every other (aligned_search_cost), so no copy can be
    missed by a candidate stage. (first, second, copy distance), as copy_distances gives it."""
    count = len(verify)
    if count < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    targets = _as_is(verify, shift)  # (N, P)
    found = []
    batch = max(1, batch_values // (_views(verify[:1], shift).shape[1] * count))
    for start in range(0, count, batch):
        views = _views(verify[start : start + batch], shift)
        correlation = (views.reshape(-1, views.shape[2]) @ targets.T).reshape(len(views), -1, count)
        distance = 1.0 - correlation.max(axis=1)  # (n, N): image start + i moved onto image j
        rows, columns = np.nonzero(distance <= max_distance)
        rows += start
        other = rows != columns
        found.append((rows[other], columns[other], distance[rows[other] - start, columns[other]]))
    rows, columns, distance = (np.concatenate(part) for part in zip(*found, strict=True))
    first, second = np.minimum(rows, columns), np.maximum(rows, columns)
    order = np.lexsort((distance, second, first))  # per pair, the better of its two directions
    first, second, distance = first[order], second[order], distance[order]
    unique = np.ones(len(first), dtype=bool)
    unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return first[unique].astype(np.int64), second[unique].astype(np.int64), distance[unique]


def isolated_copies(
    count: int,
    first: np.ndarray,
    second: np.ndarray,
    distance: np.ndarray,
    max_copy: float,
    same: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64)),
) -> np.ndarray:
    """Which of the known pairs (first[i], second[i], copy distance[i]) of `count` images are
    copies: within max_copy, and isolated (COPY_ISOLATION). Groups are the images joined by copy
    links and by `same` (pairs of identical content); a link whose distance exceeds COPY_ISOLATION
    times the distance from its group to the nearest other image among the known pairs is a
    look-alike, and the groups are formed again until none is. A group with no known outside pair
    counts as isolated: the aligned search knows every pair within its margin of the copy
    threshold, the window search only its candidates."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    copy = distance <= max_copy
    while True:
        links = (np.concatenate([first[copy], same[0]]), np.concatenate([second[copy], same[1]]))
        graph = coo_matrix((np.ones(len(links[0])), links), shape=(count, count))
        _, group = connected_components(graph, directed=False)
        outside = group[first] != group[second]
        nearest = np.full(group.max(initial=0) + 1, np.inf)
        np.minimum.at(nearest, group[first[outside]], distance[outside])
        np.minimum.at(nearest, group[second[outside]], distance[outside])
        crowded = copy & (distance > COPY_ISOLATION * nearest[group[first]])
        if not crowded.any():
            return copy
        copy &= ~crowded


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
