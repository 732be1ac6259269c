"""Near-duplicate detection on a planted benchmark: precision and recall, old detector vs new.

Real images (scikit-learn's handwritten digits brought to 32x32, and 32x32 crops of its two sample
photos, a CIFAR-like set) get planted copies with the edits real datasets contain: shifted by 1 or
2 pixels, cropped by 2-3 pixels and resized back, re-encoded as JPEG (quality 70), and shifted and
re-encoded. A detected pair is a true positive if it is a planted (original, copy) pair; every
other detected pair counts against precision (a few may be genuine near duplicates in the source).

- old: 64-bit pHash of the whole image within `--old-distance` bits (the previous default, 4).
- new: pHash of the centre crop against pHashes at every crop offset, verified by thumbnail
  correlation (clean.crop_features, clean.near_pairs), at the thresholds clean.auto_thresholds
  chooses from the data.

    python bench/bench_dedup.py [--originals 1500 --copies 300]
"""

import argparse
import io as bytes_io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from joulebench import clean  # noqa: E402

SIZE = 32
EDITS = ("shift1", "shift2", "crop", "jpeg", "shift1+jpeg")


def digits32(count: int, rng) -> np.ndarray:
    """Real handwritten digits, 8x8 with 16 levels, resized to 32x32 grey (N, 32, 32, 1) uint8."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    chosen = rng.choice(len(images), size=min(count, len(images)), replace=False)
    out = []
    for image in images[chosen]:
        pil = Image.fromarray(np.uint8(np.rint(image * 255 / 16))).resize((SIZE, SIZE), Image.BILINEAR)
        out.append(np.asarray(pil)[..., None])
    return np.stack(out)


def photo32(count: int, rng) -> np.ndarray:
    """CIFAR-like 32x32 RGB pictures: disjoint 40x40 tiles of scikit-learn's two sample photos
    (no two share a pixel), each in its 8 flips and rotations, flat ones (sky) left out."""
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        for top in range(0, photo.shape[0] - 40 + 1, 40):
            for left in range(0, photo.shape[1] - 40 + 1, 40):
                tile = Image.fromarray(photo[top : top + 40, left : left + 40])
                tile = np.asarray(tile.resize((SIZE, SIZE), Image.BILINEAR))
                if np.asarray(Image.fromarray(tile).convert("L")).std() < 20:
                    continue
                for turns in range(4):
                    out += [np.rot90(tile, turns), np.rot90(tile, turns)[:, ::-1]]
    out = np.stack(out)
    return np.ascontiguousarray(out[rng.choice(len(out), size=min(count, len(out)), replace=False)])


def shift(image: np.ndarray, pixels: int, rng) -> np.ndarray:
    """Translated by `pixels` in a random direction; the uncovered border repeats the edge."""
    dy, dx = rng.choice([-pixels, 0, pixels], 2)
    if dy == dx == 0:
        dx = pixels
    padded = np.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)), mode="edge")
    return padded[pixels - dy : pixels - dy + SIZE, pixels - dx : pixels - dx + SIZE]


def crop(image: np.ndarray, rng) -> np.ndarray:
    """2-3 pixels cut from random sides (up to 10% of the side), resized back to 32x32."""
    top, left, bottom, right = rng.integers(0, 4, 4)
    while top + bottom < 2 or left + right < 2:
        top, left, bottom, right = rng.integers(0, 4, 4)
    part = image[top : SIZE - bottom, left : SIZE - right]
    pil = Image.fromarray(part.squeeze(-1) if part.shape[-1] == 1 else part)
    return np.asarray(pil.resize((SIZE, SIZE), Image.BILINEAR)).reshape(SIZE, SIZE, -1)


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
    buffer = bytes_io.BytesIO()
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    pil.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer)).reshape(SIZE, SIZE, -1)


def edit(image: np.ndarray, kind: str, rng) -> np.ndarray:
    if kind == "shift1":
        return shift(image, 1, rng)
    if kind == "shift2":
        return shift(image, 2, rng)
    if kind == "crop":
        return crop(image, rng)
    if kind == "jpeg":
        return jpeg(image)
    return jpeg(shift(image, 1, rng))


def planted(originals: np.ndarray, copies: int, rng) -> tuple[np.ndarray, dict]:
    """Originals followed by edited copies of `copies` of them; {(original, copy): edit}."""
    sources = rng.choice(len(originals), size=copies, replace=False)
    images, truth = [originals], {}
    for number, source in enumerate(sources):
        kind = EDITS[number % len(EDITS)]
        images.append(edit(originals[source], kind, rng)[None])
        truth[(int(source), len(originals) + number)] = kind
    return np.concatenate(images).transpose(0, 3, 1, 2).copy(), truth


def old_pairs(pixels: np.ndarray, max_distance: int) -> set:
    hashes = clean.perceptual_hashes(pixels)
    distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    first, second = np.nonzero(np.triu(distances <= max_distance, k=1))
    return set(zip(first.tolist(), second.tolist(), strict=True))


def new_pairs(pixels: np.ndarray, max_shift: int) -> tuple[set, tuple]:
    features = clean.crop_features(pixels, max_shift)
    thresholds = clean.auto_thresholds(features)
    first, second, _, _ = clean.near_pairs(features, *thresholds)
    return set(zip(first.tolist(), second.tolist(), strict=True)), thresholds


def score(found: set, truth: dict, originals: int) -> str:
    """Recall of the planted pairs; precision among pairs that involve a planted copy (the ground
    truth is known there) and, as a lower bound, over all pairs (pairs of two source images may be
    genuine near duplicates in the source, as ciFAIR found in CIFAR, but count as false here)."""
    hits = found & set(truth)
    with_copy = {pair for pair in found if pair[1] >= originals}
    recall = len(hits) / len(truth)
    by_edit = []
    for kind in EDITS:
        wanted = {pair for pair, edited in truth.items() if edited == kind}
        by_edit.append(f"{kind} {len(wanted & found) / len(wanted):.2f}")
    return (
        f"recall {recall:.3f}, precision {len(hits) / max(1, len(with_copy)):.3f} "
        f"(all pairs: {len(hits) / max(1, len(found)):.3f}; {len(found) - len(with_copy)} pairs of "
        f"two source images); recall by edit: {', '.join(by_edit)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=1500)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--old-distance", type=int, default=4)
    parser.add_argument("--max-shift", type=int, default=2)
    args = parser.parse_args()
    for name, make in (("digits 32x32", digits32), ("photo crops 32x32", photo32)):
        rng = np.random.default_rng(0)
        pixels, truth = planted(make(args.originals, rng), args.copies, rng)
        print(f"{name}: {len(pixels)} images, {len(truth)} planted copies ({', '.join(EDITS)})")
        originals = len(pixels) - len(truth)
        old = score(old_pairs(pixels, args.old_distance), truth, originals)
        print(f"  old: pHash <= {args.old_distance} bits: {old}")
        started = time.perf_counter()
        found, (bits, similarity) = new_pairs(pixels, args.max_shift)
        seconds = time.perf_counter() - started
        new = score(found, truth, originals)
        rule = f"shifted pHash <= {bits} bits, correlation >= {similarity} (auto)"
        print(f"  new: {rule}: {new} [{seconds:.1f} s]")


if __name__ == "__main__":
    main()
