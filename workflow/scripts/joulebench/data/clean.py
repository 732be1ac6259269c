"""Find and drop bad data: exact and near duplicates, train/test leaks, conflicting labels.

Works on the decoded splits of a prepared dataset (files that did not decode were already
listed by the loader). Every removed image is returned with its reason and the image it matched,
so nothing disappears silently.

Exact duplicates are found by a content hash of the 8-bit pixels. Near duplicates (shifted by a
pixel or two, cropped a little, re-encoded, brightened: the copies real datasets contain, ciFAIR,
Barz & Denzler 2020) in two steps: candidates from window pHashes and thumbnails
(joulebench.data.candidates), then a candidate is a copy only where the two grey images, aligned
over small shifts and crop-and-resizes, correlate within a threshold calibrated on copies made
from the dataset's own images (joulebench.data.copy_distance); the other candidates are look-alikes
(distinct samples that sit close), reported and removed only when asked.
Removal goes image by image in split order train, val, test: an image is removed only as a copy of
an image that stays, and names it, so a test image that copies a training image is the one removed
(leakage); copies whose labels disagree both go. bench/bench_dedup.py measures precision and recall.
"""

import logging

import numpy as np

from joulebench.data.candidates import aligned_pairs, auto_thresholds, crop_features, near_pairs, pair_scores
from joulebench.data.copy_distance import COPY_ISOLATION, copy_distances, copy_threshold, isolated_copies
from joulebench.data.image_hash import content_hashes, to_uint8

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

# What cleaning imports (the copy threshold's calibration re-encodes images with PIL, whose first
# save loads these format plugins; copy groups are scipy's graph components), for clean_dataset
# to import before its energy window opens.
WORK_MODULES = (
    "PIL.Image",
    "scipy.sparse.csgraph",
    *(f"PIL.{name}ImagePlugin" for name in ("Bmp", "Gif", "Jpeg", "Ppm", "Png")),
)
LOOKALIKE_COLUMNS = [
    "split", "index", "item", "label", "other_split", "other_index", "other_item", "other_label",
    "hash_distance", "similarity", "copy_distance", "across_splits", "removed",
]  # fmt: skip


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


def identical_pairs(digests: list) -> list[tuple[int, int]]:
    """(first, i) for every image i whose content an earlier image `first` has, the first such."""
    first_with, pairs = {}, []
    for i, digest in enumerate(digests):
        if digest in first_with:
            pairs.append((first_with[digest], i))
        else:
            first_with[digest] = i
    return pairs


def near_links(features, digests, settings, chosen, parts, pixel_max) -> tuple[list, list]:
    """Near pairs (i < j, distinct content) split into copies and look-alikes, each as
    (i, j, hash_distance, similarity, copy_distance).

    Candidates are the pairs within the hash thresholds (near_pairs) and, where every pair can be
    compared at every alignment (candidates.aligned_pairs), every pair within a margin of the copy
    threshold. Copies are the candidates within the copy threshold whose group is isolated
    (copy_distance.isolated_copies); look-alikes, the other pairs within the hash thresholds or
    within the copy threshold."""
    auto_bits, auto_similarity = auto_thresholds(features)
    max_distance = settings["near_duplicate_max_distance"]
    min_similarity = settings["near_duplicate_min_similarity"]
    max_copy = settings.get("copy_max_distance", "auto")
    max_distance = auto_bits if max_distance == "auto" else int(max_distance)
    min_similarity = auto_similarity if min_similarity == "auto" else float(min_similarity)
    max_copy = copy_threshold(parts, pixel_max, features.shift) if max_copy == "auto" else float(max_copy)
    first, second, bits, similarity = near_pairs(features, max_distance, min_similarity)
    distance = copy_distances(features.verify, first, second, features.shift)
    count, listed = len(features.verify), np.ones(len(first), dtype=bool)
    aligned = aligned_pairs(features, max_copy)
    if aligned is not None:
        more = ~np.isin(aligned[0] * count + aligned[1], first * count + second)
        more_first, more_second, more_distance = (part[more] for part in aligned)
        more_bits, more_similarity = pair_scores(features, more_first, more_second)
        first, second = np.concatenate([first, more_first]), np.concatenate([second, more_second])
        bits, similarity = np.concatenate([bits, more_bits]), np.concatenate([similarity, more_similarity])
        distance = np.concatenate([distance, more_distance])
        listed = np.concatenate([listed, more_distance <= max_copy])  # the rest: neighbourhood
    distinct = np.array([digests[i] != digests[j] for i, j in zip(first, second, strict=True)], dtype=bool)
    first, second, bits, similarity = first[distinct], second[distinct], bits[distinct], similarity[distinct]
    distance, listed = distance[distinct], listed[distinct]
    same = np.array(identical_pairs(digests), dtype=np.int64).reshape(-1, 2).T
    copy = isolated_copies(count, first, second, distance, max_copy, (same[0], same[1]))
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
    copies = [row for row, is_copy in zip(rows, copy, strict=True) if is_copy]
    lookalikes = [
        row for row, is_copy, shown in zip(rows, copy, listed, strict=True) if shown and not is_copy
    ]
    search = "windows" if aligned is None else "aligned"
    log.info(
        "near pairs (%s search) within %d bits and correlation >= %.3f: %d copies (copy distance "
        "<= %.4f, isolated), %d look-alikes (max shift %d px)",
        search, max_distance, min_similarity, len(copies), max_copy, len(lookalikes), features.shift,
    )  # fmt: skip
    if chosen is not None:
        chosen |= {
            "max_distance": max_distance,
            "min_similarity": min_similarity,
            "max_shift": features.shift,
            "copy_max_distance": max_copy,
            "copy_isolation": COPY_ISOLATION,
            "candidate_search": search,
        }
    return copies, lookalikes


def _matches(count: int, digests: list, links: list) -> dict[int, list]:
    """Every image's links as (other, hash_distance, similarity, copy_distance): the near links,
    and each image of identical content linked to the first image with that content."""
    matches = {i: [] for i in range(count)}
    for j, i in identical_pairs(digests):
        matches[i].append((j, 0, 1.0, 0.0))
        matches[j].append((i, 0, 1.0, 0.0))
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
        copies, similar = near_links(features, digests, settings, chosen, pixels, pixel_max)
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
