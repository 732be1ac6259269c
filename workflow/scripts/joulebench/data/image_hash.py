"""Images as 8-bit pixels and grey arrays, their area resizes and hashes: the image arithmetic
cleaning (copies, candidates) and the diversity measure share.

pHash (Zauner 2010): grey, area-resize to 32x32, 2-D DCT, the 8x8 lowest frequencies above their
median, bit for bit as ImageHash computes it, vectorized.
"""

import hashlib

import numpy as np

from joulebench.data import hamming

HASH_SIZE = 8  # pHash keeps the 8x8 lowest DCT frequencies: a 64-bit hash
HASH_INPUT = 32  # ... of the image resized to 32x32 grey, as ImageHash does
ALIGN_SIDE = 32  # copies are checked on grey images of at most 32x32 pixels


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] back to the 8-bit pixels they were decoded from."""
    scaled = np.multiply(images, np.float32(255.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def content_hashes(pixels: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """PIL's convert("L") in integers (ITU-R 601-2 luma), so hashes match ImageHash on the same file."""
    if pixels.shape[1] == 1:
        return pixels[:, 0].astype(np.float64)
    r, g, b = (pixels[:, c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.float64)


def area_weights(size_in: int, size_out: int, start: float = 0.0, length: float | None = None) -> np.ndarray:
    """(size_out, size_in) box-filter weights: each output pixel averages the input it covers, of
    the window [start, start + length) of the axis (the whole axis by default; fractional edges
    weigh the pixels they cut by the part covered)."""
    length = size_in - start if length is None else length
    edges = np.linspace(start, start + length, size_out + 1)
    pixels = np.arange(size_in)
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    weights = np.maximum(overlap, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def dct_matrix(size: int) -> np.ndarray:
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
    resize_rows = area_weights(height, HASH_INPUT)
    resize_cols = area_weights(width, HASH_INPUT)
    dct = dct_matrix(HASH_INPUT)[:HASH_SIZE]
    hashes = np.empty(len(pixels), dtype=np.uint64)
    for start in range(0, len(pixels), batch):
        grey = to_grey(pixels[start : start + batch])
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


def verify_images(parts: list, side: int, batch: int = 1024) -> np.ndarray:
    """(N, S, S) uint8 grey images, S = side, of the (N, C, H, W) uint8 parts, area-resized."""
    out = np.empty((sum(len(part) for part in parts), side, side), dtype=np.uint8)
    row = 0
    for part in parts:
        for start in range(0, len(part), batch):
            grey = to_grey(np.ascontiguousarray(part[start : start + batch]))
            out[row : row + len(grey)] = to_verify(grey, side)
            row += len(grey)
    return out


def to_verify(grey: np.ndarray, side: int) -> np.ndarray:
    height, width = grey.shape[1:]
    return np.rint(area_weights(height, side) @ grey @ area_weights(width, side).T)
