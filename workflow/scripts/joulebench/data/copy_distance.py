"""What a copy is: one picture shifted, cropped and resized back, or re-encoded. How far two images
are from being one picture (copy_distances: the best correlation over the alignments a copy may
have), and the largest distance a copy has, calibrated on copies made from the dataset's own
images (copy_threshold).
"""

import numpy as np

from joulebench.data.image_hash import ALIGN_SIDE, area_weights, verify_images

VERIFY_SIDE = 16  # aligned copies are compared area-resized to at most 16x16
CALIBRATION_IMAGES = 256  # images edited into copies to set the copy threshold
CALIBRATION_MARGIN = 1.5  # the threshold: this times the 99th percentile of their distances
COPY_FLOOR = 0.001  # ... and never below this (lossless copies sit at 0)


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
    to_verify = alignments[copy_cuts(side, shift).index((0, 0))]
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
