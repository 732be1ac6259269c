"""Cleaning on a real image tree with planted problems: every planted item found, no clean one lost."""

import io as bytes_io
import shutil

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images

from joulebench import store
from joulebench.config import resolved_config
from joulebench.data import clean, copy_distance, image_hash, sources, splits
from joulebench.data.prepared import prepared_files
from joulebench.data.stages import clean_dataset, prepare_dataset

CLASSES = ("boats", "flowers", "roofs")
PER_CLASS = 20
SETTINGS = {**resolved_config()["cleaning"], "near_duplicate_max_distance": 6, "examples_per_reason": 3}
ENERGY = {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}


def photo_crops(count: int, seed: int = 0) -> list[Image.Image]:
    """32x32 crops of scikit-learn's two sample photos, textured and pairwise far apart in pHash."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops, hashes = [], []
    while len(crops) < count:
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(48, 160))
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((32, 32), Image.BILINEAR)
        if np.asarray(crop.convert("L")).std() < 30:  # flat sky: no structure to hash
            continue
        digest = imagehash.phash(crop)
        if all(digest - other > 20 for other in hashes):
            crops.append(crop)
            hashes.append(digest)
    return crops


def near_copy(image: Image.Image) -> Image.Image:
    """A slightly brighter JPEG re-encode: different bytes, same picture."""
    buffer = bytes_io.BytesIO()
    ImageEnhance.Brightness(image).enhance(1.04).save(buffer, "JPEG", quality=92)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def planted_tree(tmp_path_factory):
    """An ImageFolder tree of real photo crops plus planted problems; returns (root, planted)."""
    root = tmp_path_factory.mktemp("tree")
    crops = photo_crops(len(CLASSES) * PER_CLASS)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            crops[c * PER_CLASS + i].save(root / name / f"{i:02d}.png")
    png = (root / "boats/00.png").read_bytes()
    jpeg = bytes_io.BytesIO()
    crops[1].save(jpeg, "JPEG", quality=90)
    (root / "boats/truncated.png").write_bytes(png[: len(png) // 2])
    (root / "flowers/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "roofs/garbage.png").write_bytes(np.random.default_rng(1).bytes(500))
    # Another size: brought to 32x32 by dataset.image_size, it is then a near copy of boats/02.
    crops[2].resize((40, 40)).save(root / "boats/big.png")
    # A grey copy of a colour picture loads as RGB (grey in three channels): a near duplicate.
    crops[3].convert("L").save(root / "boats/grey.png")
    planted = {
        "unreadable": {"boats/truncated.png", "flowers/truncated.jpg", "roofs/garbage.png"},
        # Pairs of one picture: exactly one of each pair must go (which one depends on the split).
        "pairs": [{"boats/03.png", "boats/grey.png"}, {"boats/02.png", "boats/big.png"}],
        "conflicts": set(),
    }
    for i in (4, 5, 6):
        shutil.copy(root / f"flowers/{i:02d}.png", root / f"flowers/copy{i}.png")
        planted["pairs"].append({f"flowers/{i:02d}.png", f"flowers/copy{i}.png"})
    for i in (7, 8, 9):
        near_copy(crops[2 * PER_CLASS + i]).save(root / f"roofs/near{i}.png")
        planted["pairs"].append({f"roofs/{i:02d}.png", f"roofs/near{i}.png"})
    # The same picture filed under two classes: neither label can be trusted, both go.
    shutil.copy(root / "boats/10.png", root / "flowers/mislabelled.png")
    planted["conflicts"] = {"boats/10.png", "flowers/mislabelled.png"}
    return root, planted


def run_cleaning(root, tmp_path, settings=SETTINGS):
    dataset = {"name": "tree", "source": "imagefolder", "root": str(root), "resize": "stretch"}
    dataset |= {"val_fraction": 0.2, "test_fraction": 0.3, "split_seed": 0, "image_size": 32}
    raw = prepared_files(tmp_path / "raw")
    prepare_dataset({}, raw, dataset, settings["enabled"], ENERGY)
    out = {
        "splits": tmp_path / "splits.npz",
        "facts": tmp_path / "dataset.json",
        "report": tmp_path / "cleaning_report.json",
        "removed": tmp_path / "removed.csv",
        "lookalikes": tmp_path / "lookalikes.csv",
        "energy": tmp_path / "energy.json",
    }
    clean_dataset(raw, out, settings, ENERGY)
    return out


def test_every_planted_item_is_found_and_no_clean_item_removed(planted_tree, tmp_path):
    root, planted = planted_tree
    out = run_cleaning(root, tmp_path)
    removed = pd.read_csv(out["removed"])
    reason_of = dict(zip(removed["item"], removed["reason"], strict=True))
    for item in planted["unreadable"]:
        assert reason_of.get(item) == "unreadable", item
    for pair in planted["pairs"]:
        gone = pair & set(reason_of)
        assert len(gone) == 1, pair
        assert reason_of[gone.pop()] in ("exact_duplicate", "near_duplicate", "leakage")
    for item in planted["conflicts"]:
        assert reason_of.get(item) == "conflicting_labels", item
    expected = set().union(planted["unreadable"], planted["conflicts"])
    assert len(reason_of) == len(expected) + len(planted["pairs"])  # nothing clean removed

    # Integer columns stay integers although unreadable files leave them empty.
    as_text = pd.read_csv(out["removed"], dtype=str)
    for column in ("index", "label", "matched_index", "matched_label", "hash_distance"):
        assert as_text[column].dropna().str.fullmatch(r"\d+").all(), column
    report = store.read_json(out["report"])
    assert report["removed_total"] == len(removed)
    assert set(report["diversity"]) == {"raw", "cleaned"}
    assert report["diversity"]["cleaned"]["images"] == report["after"]["train"]["count"]
    assert report["near_duplicate_thresholds"]["max_distance"] == SETTINGS["near_duplicate_max_distance"]
    assert sum(report["removed_by_reason"].values()) == len(removed)
    assert report["removed_by_reason"]["unreadable"] == 3
    kept = store.load_arrays(out["splits"])
    assert sum(report["after"][s]["count"] for s in clean.SPLIT_ORDER) == sum(
        len(kept[f"{s}_y"]) for s in splits.SPLITS
    )
    facts = store.read_json(out["facts"])
    assert facts["train_count"] == len(kept["train_y"]) and facts["classes"] == list(CLASSES)
    assert store.read_json(out["energy"])["rule"] == "clean_dataset"
    # After cleaning no two images, in any splits, are duplicates.
    pixels = image_hash.to_uint8(np.concatenate([kept[f"{s}_x"] for s in splits.SPLITS]))
    hashes = image_hash.perceptual_hashes(pixels)
    assert len(image_hash.hamming_pairs(hashes, SETTINGS["near_duplicate_max_distance"])[0]) == 0


def test_unreadable_file_is_an_error_naming_it_when_cleaning_is_off(planted_tree):
    root, _ = planted_tree
    with pytest.raises(sources.DatasetError, match=r"cannot read image .*(truncated|garbage)"):
        sources.load_imagefolder_source(str(root), skip_unusable=False, image_size=32)


def test_test_images_copying_train_images_are_leaks_and_train_keeps_its_copy():
    rng = np.random.default_rng(0)
    crops = photo_crops(12, seed=3)
    images = np.stack([np.asarray(c, dtype=np.float32).transpose(2, 0, 1) / 255 for c in crops])
    arrays = {
        "train_x": images[:8], "train_y": np.arange(8) % 2, "train_id": np.arange(8),
        "val_x": images[8:10], "val_y": np.array([0, 1]), "val_id": np.array([8, 9]),
        # test: two fresh images, an exact copy of train[3] and a near copy of train[4]
        "test_x": np.stack([images[10], images[11], images[3], images[4] * 1.03]).clip(0, 1),
        "test_y": np.array([0, 1, 1, 0]), "test_id": np.array([10, 11, 12, 13]),
    }  # fmt: skip
    arrays["test_x"][3] += rng.normal(0, 0.004, arrays["test_x"][3].shape).astype(np.float32)
    names = [f"img{i}" for i in range(14)]
    cleaned, removed = clean.clean_splits(arrays, names, SETTINGS)
    assert [
        (r["split"], r["index"], r["reason"], r["matched_split"], r["matched_index"]) for r in removed
    ] == [
        ("test", 2, "leakage", "train", 3),
        ("test", 3, "leakage", "train", 4),
    ]
    assert len(cleaned["train_y"]) == 8 and list(cleaned["test_id"]) == [10, 11]


def test_vectorized_phash_equals_imagehash_on_32x32_images():
    crops = photo_crops(30, seed=5)
    pixels = np.stack([np.asarray(c).transpose(2, 0, 1) for c in crops])
    ours = image_hash.perceptual_hashes(pixels)
    for crop, value in zip(crops, ours, strict=True):
        bits = np.unpackbits(np.array([value], dtype=">u8").view(np.uint8)).astype(bool)
        assert np.array_equal(bits.reshape(8, 8), imagehash.phash(crop).hash)


def test_disabled_near_duplicates_keep_near_copies():
    crops = photo_crops(4, seed=7)
    base = np.stack([np.asarray(c, dtype=np.float32).transpose(2, 0, 1) / 255 for c in crops])
    near = np.concatenate([base, (base[:1] * 1.03).clip(0, 1)])
    arrays = {"train_x": near, "train_y": np.zeros(5, dtype=np.int64), "train_id": np.arange(5)}
    for split in ("val", "test"):
        arrays |= {
            f"{split}_x": base[:0],
            f"{split}_y": np.zeros(0, np.int64),
            f"{split}_id": np.zeros(0, np.int64),
        }
    on = clean.clean_splits(arrays, [str(i) for i in range(5)], SETTINGS)[1]
    off = clean.clean_splits(arrays, [str(i) for i in range(5)], {**SETTINGS, "near_duplicates": False})[1]
    assert [r["reason"] for r in on] == ["near_duplicate"] and off == []


def test_digits_default_cleaning_removes_few_and_never_a_whole_class():
    images, labels, classes = sources.load_digits_source()
    arrays = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
    settings = {**SETTINGS, "near_duplicate_max_distance": 4}
    lookalikes = []
    cleaned, removed = clean.clean_splits(
        arrays, [str(i) for i in range(len(labels))], settings, lookalikes=lookalikes
    )
    # load_digits holds distinct drawings only: close ones are listed as look-alikes, none removed.
    assert removed == [] and len(lookalikes) > 0
    assert np.bincount(cleaned["train_y"]).min() > 100


def test_shifted_cropped_and_jpeg_copies_of_training_images_in_test_are_leaks():
    """The edits that defeated the whole-image pHash: 1-2 pixel shifts, and JPEG on top."""
    crops = photo_crops(12, seed=3)
    base = np.stack([np.asarray(c) for c in crops])  # (12, 32, 32, 3)

    def shifted(image, dy, dx):
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
        return padded[2 - dy : 34 - dy, 2 - dx : 34 - dx]

    def jpeg(image):
        buffer = bytes_io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=75)
        buffer.seek(0)
        return np.asarray(Image.open(buffer).convert("RGB"))

    copies = np.stack([shifted(base[0], 1, 0), shifted(base[1], -2, 1), jpeg(shifted(base[2], 0, 1))])
    old = image_hash.perceptual_hashes(np.concatenate([base[:3], copies]).transpose(0, 3, 1, 2))
    assert (np.bitwise_count(old[:3] ^ old[3:]) > SETTINGS["near_duplicate_max_distance"]).any()
    labels = np.arange(12) % 3
    arrays = {
        "train_x": base.transpose(0, 3, 1, 2),
        "train_y": labels,
        "train_id": np.arange(12),
        "val_x": base[:0].transpose(0, 3, 1, 2),
        "val_y": labels[:0],
        "val_id": np.arange(0),
        "test_x": copies.transpose(0, 3, 1, 2),
        "test_y": labels[:3],
        "test_id": np.arange(12, 15),
        "pixel_max": np.asarray(255),
    }
    settings = resolved_config()["cleaning"]  # the default: thresholds chosen from the data
    chosen = {}
    cleaned, removed = clean.clean_splits(arrays, [f"img{i}" for i in range(15)], settings, chosen=chosen)
    assert sorted((r["item"], r["reason"], r["matched_item"]) for r in removed) == [
        ("img12", "leakage", "img0"),
        ("img13", "leakage", "img1"),
        ("img14", "leakage", "img2"),
    ]
    assert len(cleaned["train_y"]) == 12 and len(cleaned["test_y"]) == 0
    assert set(chosen) == {
        "max_distance", "min_similarity", "max_shift", "copy_max_distance", "copy_isolation",
        "candidate_search",
    }  # fmt: skip
    assert chosen["max_shift"] == 2 and chosen["candidate_search"] == "aligned"


def digit_splits(train: list[int], test: list[int], val: tuple = ()) -> tuple[dict, list[str]]:
    """Splits holding chosen load_digits images (by index), as prepare_dataset stores them."""
    images, labels, _ = sources.load_digits_source()
    arrays = {"pixel_max": np.asarray(16)}
    for split, rows in (("train", train), ("val", list(val)), ("test", test)):
        rows = np.asarray(rows, dtype=np.int64)
        arrays |= {f"{split}_x": images[rows], f"{split}_y": labels[rows], f"{split}_id": rows}
    return arrays, [str(i) for i in range(len(labels))]


def test_two_drawings_of_a_six_are_lookalikes_listed_not_removed():
    """load_digits 1005 and 1480: distinct samples within the near-duplicate thresholds."""
    arrays, names = digit_splits(list(range(0, 300)) + [1480], [1005, 1006])
    lookalikes = []
    _, removed = clean.clean_splits(arrays, names, resolved_config()["cleaning"], lookalikes=lookalikes)
    assert "1005" not in {r["item"] for r in removed}
    pair = [row for row in lookalikes if {row["item"], row["other_item"]} == {"1005", "1480"}]
    assert len(pair) == 1 and pair[0]["across_splits"] and not pair[0]["removed"]
    asked = {**resolved_config()["cleaning"], "remove_lookalikes": True}
    _, removed = clean.clean_splits(arrays, names, asked)
    row = next(r for r in removed if r["item"] == "1005")
    assert (row["reason"], row["matched_item"], row["detail"]) == (
        "leakage", "1480", "look-alike of an image kept in train"
    )  # fmt: skip


def shifted_right(image: np.ndarray, pixels: int) -> np.ndarray:
    return np.pad(image, ((0, 0), (0, 0), (pixels, 0)), mode="edge")[..., : image.shape[-1]]


def test_removed_images_name_the_image_they_match_within_the_thresholds():
    """A chain A ~ B ~ C of shifted copies: C is 2 pixels from A, beyond the copy alignments of a
    1-pixel shift limit, so C may only go as a copy of B, and B must then stay."""
    crops = photo_crops(6, seed=11)
    base = np.stack([np.asarray(c).transpose(2, 0, 1) for c in crops])
    chain = np.stack([base[0], shifted_right(base[0], 1), shifted_right(base[0], 2)])
    images = np.concatenate([chain, base[1:]])
    arrays = {
        "train_x": images,
        "train_y": np.zeros(len(images), np.int64),
        "train_id": np.arange(len(images)),
    }
    for split in ("val", "test"):
        arrays |= {
            f"{split}_x": images[:0],
            f"{split}_y": np.zeros(0, np.int64),
            f"{split}_id": np.zeros(0, np.int64),
        }
    arrays["pixel_max"] = np.asarray(255)
    settings = {
        **resolved_config()["cleaning"],
        "near_duplicate_max_shift": 1,
        "near_duplicate_max_distance": 8,
    }
    chosen = {}
    _, removed = clean.clean_splits(arrays, [f"img{i}" for i in range(len(images))], settings, chosen=chosen)
    for row in removed:
        assert row["copy_distance"] <= chosen["copy_max_distance"], row
        assert row["matched_item"] not in {r["item"] for r in removed}, row
    assert [(r["item"], r["matched_item"]) for r in removed] == [("img1", "img0")]


def test_leak_of_an_exact_copy_says_which_split_kept_the_original():
    arrays, names = digit_splits(list(range(0, 40)), [5, 41], val=[42])
    _, removed = clean.clean_splits(arrays, names, resolved_config()["cleaning"])
    assert [(r["split"], r["item"], r["reason"], r["matched_split"], r["detail"]) for r in removed] == [
        ("test", "5", "leakage", "train", "copy of an image kept in train")
    ]


def digits_at_32(rows) -> np.ndarray:
    """load_digits images (by index) brought to 32x32 grey as a camera-sized dataset would hold
    them: (N, 1, 32, 32) uint8, bilinear."""
    images, _, _ = sources.load_digits_source()
    big = [
        Image.fromarray(np.uint8(np.rint(images[row, 0] * 255))).resize((32, 32), Image.BILINEAR)
        for row in rows
    ]
    return np.stack([np.asarray(image) for image in big])[:, None]


def test_cropped_and_resized_copies_of_real_digits_are_removed_and_a_close_drawing_is_kept():
    """Copies cut by 1-3 pixels a side and resized back, the crop a copy in a dataset gets, go as
    leaks of their originals; digit 1398, a distinct drawing of a 4 close to 1397 (2 bits, thumbnail
    correlation 0.99), stays and is listed as a look-alike."""
    _, labels, _ = sources.load_digits_source()
    train = [row for row in range(1300, 1500) if row != 1398]
    originals = [1397, 1310, 1333, 1402, 1450, 1488]
    cuts = [(3, 0, 0, 3), (1, 2, 2, 1), (0, 3, 3, 0), (2, 1, 1, 2), (3, 2, 0, 1), (0, 1, 3, 2)]
    copies = []
    for row, (top, left, bottom, right) in zip(originals, cuts, strict=True):
        image = Image.fromarray(digits_at_32([row])[0, 0])
        cropped = image.crop((left, top, 32 - right, 32 - bottom)).resize((32, 32), Image.BILINEAR)
        copies.append(np.asarray(cropped)[None])
    test_x = np.concatenate([digits_at_32([1398]), np.stack(copies)])
    arrays = {
        "train_x": digits_at_32(train), "train_y": labels[train], "train_id": np.array(train),
        "val_x": test_x[:0], "val_y": labels[:0], "val_id": np.arange(0),
        "test_x": test_x, "test_y": labels[[1398, *originals]],
        "test_id": np.arange(len(test_x)) + len(labels),
        "pixel_max": np.asarray(255),
    }  # fmt: skip
    names = [str(i) for i in range(len(labels))] + ["1398"] + [f"copy of {row}" for row in originals]
    lookalikes = []
    _, removed = clean.clean_splits(arrays, names, resolved_config()["cleaning"], lookalikes=lookalikes)
    assert sorted((r["item"], r["reason"], r["matched_item"]) for r in removed) == sorted(
        (f"copy of {row}", "leakage", str(row)) for row in originals
    )
    assert {"1397", "1398"} in [{row["item"], row["other_item"]} for row in lookalikes]


def cropped_8x8(image: np.ndarray, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """A (1, 8, 8) digit in [0, 1] cut by a pixel on some sides, resized back (bilinear) and
    stored at load_digits' 17 levels again, as prepare_dataset holds it."""
    pil = Image.fromarray(np.uint8(np.rint(image[0] * 255)))
    pil = pil.crop((left, top, 8 - right, 8 - bottom)).resize((8, 8), Image.BILINEAR)
    return (np.rint(np.asarray(pil, dtype=np.float32) * 16 / 255) / 16).astype(np.float32)[None]


def test_cropped_copies_of_8x8_digits_are_found_though_their_hashes_move():
    """A one-pixel crop resized back moves an 8x8 image's pHash by 4-10 bits, beyond any candidate
    threshold: small sets compare every pair at every alignment, so the copies go as leaks."""
    images, labels, _ = sources.load_digits_source()
    originals = [3, 150, 321, 476, 599, 730, 888, 1042, 1203, 1377]
    cuts = [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 1, 0, 0)] * 2
    copies = np.stack([cropped_8x8(images[row], *cut) for row, cut in zip(originals, cuts, strict=True)])
    arrays, names = digit_splits(list(range(0, 1500)), [])
    arrays |= {
        "test_x": copies, "test_y": labels[originals], "test_id": np.arange(len(labels), len(labels) + 10)
    }  # fmt: skip
    names += [f"copy of {row}" for row in originals]
    chosen = {}
    _, removed = clean.clean_splits(arrays, names, resolved_config()["cleaning"], chosen=chosen)
    assert sorted((r["item"], r["reason"], r["matched_item"]) for r in removed) == sorted(
        (f"copy of {row}", "leakage", str(row)) for row in originals
    )
    assert chosen["candidate_search"] == "aligned"
    for row in removed:
        assert row["copy_distance"] <= chosen["copy_max_distance"], row


def test_distinct_digits_within_the_copy_threshold_in_a_crowd_are_lookalikes():
    """load_digits 403~438 and 1471~1485 are distinct drawings that line up within a copy
    threshold of 0.0134 (0.0127 and 0.0115), but so do other drawings near them: a picture and its
    copies sit far closer to each other than to anything else, so these are look-alikes."""
    _, labels, _ = sources.load_digits_source()
    test = [438, 1485]
    arrays, names = digit_splits([row for row in range(len(labels)) if row not in test], test)
    settings = {**resolved_config()["cleaning"], "copy_max_distance": 0.0134}
    lookalikes = []
    _, removed = clean.clean_splits(arrays, names, settings, lookalikes=lookalikes)
    assert removed == []
    listed = {frozenset((row["item"], row["other_item"])): row for row in lookalikes}
    for pair in ({"403", "438"}, {"1471", "1485"}):
        row = listed[frozenset(pair)]
        assert row["copy_distance"] <= 0.0134 and row["across_splits"] and not row["removed"]


def test_a_picture_and_two_copies_are_one_isolated_group_and_a_crowd_is_not():
    """Images 0-2: a picture and two copies, 0.05 from anything else; 4-6: distinct drawings each
    within the copy threshold of the others, but 0.02 from a fourth (7)."""
    first = np.array([0, 0, 1, 0, 4, 4, 5, 4])
    second = np.array([1, 2, 2, 3, 5, 6, 6, 7])
    distance = np.array([0.002, 0.003, 0.004, 0.05, 0.008, 0.010, 0.012, 0.02])
    copy = copy_distance.isolated_copies(8, first, second, distance, max_copy=0.013)
    assert copy.tolist() == [True, True, True, False, False, False, False, False]


def test_the_exhaustive_search_returns_the_copy_distance_of_every_close_pair():
    images, _, _ = sources.load_digits_source()
    verify = image_hash.verify_images([clean.stored_uint8(images[:300], 16)], 8)
    first, second, distance = copy_distance.close_copies(verify, 1, 0.2)
    assert len(first) > 100 and (first < second).all()
    np.testing.assert_allclose(distance, copy_distance.copy_distances(verify, first, second, 1), atol=1e-5)
    every = np.array([(i, j) for i in range(300) for j in range(i + 1, 300)])
    all_distances = copy_distance.copy_distances(verify, every[:, 0], every[:, 1], 1, batch=512)
    assert {tuple(pair) for pair in every[all_distances <= 0.2]} == set(zip(first, second, strict=True))
