import multiprocessing
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_tree
from joulebench.data import loader, sources, splits


def test_digits_is_the_real_dataset():
    images, labels, classes = sources.load_digits_source()
    assert images.shape == (1797, 1, 8, 8)
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert classes == [str(i) for i in range(10)]
    assert np.bincount(labels).min() >= 170


def test_split_is_disjoint_stratified_and_seeded(digits_arrays):
    arrays, _ = digits_arrays
    sizes = [len(arrays[f"{s}_y"]) for s in splits.SPLITS]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1)
    assert sizes[1] == pytest.approx(0.15 * 1797, abs=2)
    # Stratified: every class share in test within one image of the overall share.
    overall = np.bincount(np.concatenate([arrays[f"{s}_y"] for s in splits.SPLITS])) / 1797
    test_counts = np.bincount(arrays["test_y"])
    assert np.all(np.abs(test_counts - overall * sizes[2]) <= 1.0)
    # Disjoint: no image appears in two splits.
    keys = {s: {img.tobytes() for img in arrays[f"{s}_x"]} for s in splits.SPLITS}
    assert not keys["train"] & keys["test"]
    images, labels, _ = sources.load_digits_source()
    again = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    # Ids point back at the source image.
    assert np.array_equal(images[arrays["test_id"]], arrays["test_x"])
    assert sorted(np.concatenate([arrays[f"{s}_id"] for s in splits.SPLITS])) == list(range(1797))


def test_imagefolder_loads_real_files(tmp_path):
    make_image_tree(tmp_path)
    source = sources.load_imagefolder_source(str(tmp_path))
    assert source.images.shape == (6, 3, 6, 6)
    assert source.classes == ["cat", "dog"]
    assert list(source.labels) == [0, 0, 0, 1, 1, 1]
    assert source.names[0] == "cat/0.png" and source.rejected == []


def test_imagefolder_of_mixed_sizes_asks_for_image_size_and_is_never_dropped(tmp_path):
    make_image_tree(tmp_path)
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "cat" / "big.png")
    for skip in (False, True):
        with pytest.raises(sources.DatasetError, match=r"big.png is 9x9\); set dataset.image_size"):
            sources.load_imagefolder_source(str(tmp_path), skip_unusable=skip)


@pytest.mark.parametrize("resize", sources.RESIZE_METHODS)
def test_imagefolder_of_mixed_sizes_and_formats_is_brought_to_image_size(tmp_path, resize):
    make_image_tree(tmp_path)
    Image.fromarray(np.full((9, 15, 3), 200, dtype=np.uint8)).save(tmp_path / "cat" / "wide.jpg")
    Image.fromarray(np.full((40, 20), 90, dtype=np.uint8)).save(tmp_path / "dog" / "tall.bmp")
    source = sources.load_imagefolder_source(str(tmp_path), image_size=[8, 10], resize=resize, workers=2)
    assert source.images.shape == (8, 3, 8, 10) and source.images.dtype == np.uint8
    assert source.rejected == []
    wide = source.images[source.names.index("cat/wide.jpg")]
    tall = source.images[source.names.index("dog/tall.bmp")]
    if resize == "pad":  # aspect kept: black borders on the short side
        assert (wide[:, 0] == 0).all() and abs(int(wide[:, 4, 5].mean()) - 200) <= 3
        assert (tall[:, :, 0] == 0).all() and (tall[:, 4, 5] == 90).all()
    else:  # stretched or centre-cropped: no border
        assert abs(int(wide.mean()) - 200) <= 3 and (tall == 90).all()


def test_imagefolder_mixing_grey_rgb_and_rgba_loads_every_image_as_rgb(tmp_path):
    make_image_tree(tmp_path)
    grey = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    Image.fromarray(grey).save(tmp_path / "dog" / "grey.png")
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cat" / "alpha.png")
    source = sources.load_imagefolder_source(str(tmp_path))
    assert source.images.shape == (8, 3, 6, 6) and source.rejected == []
    converted = source.images[source.names.index("dog/grey.png")]
    assert (converted == grey[None].repeat(3, 0)).all()  # grey copied, not changed
    red = source.images[source.names.index("cat/alpha.png")]
    assert (red[0] == 200).all() and (red[1:] == 0).all()  # alpha dropped


def test_imagefolder_all_grey_stays_one_channel(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 5), 10 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    assert sources.load_imagefolder_source(str(tmp_path)).images.shape == (4, 1, 5, 5)


def test_imagefolder_empty_class_folder_is_named(tmp_path):
    make_image_tree(tmp_path)
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(sources.DatasetError) as err:
        sources.load_imagefolder_source(str(tmp_path))
    assert str(err.value) == (
        f"class folders without image files under {str(tmp_path)!r}: emu; add images "
        "(.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp) or remove the folders"
    )


def test_a_single_class_is_rejected(tmp_path):
    make_image_tree(tmp_path, {"cat": 3})
    dataset = {"name": "pets", "source": "imagefolder", "root": str(tmp_path), "resize": "stretch"}
    with pytest.raises(sources.DatasetError) as err:
        sources.load_source(dataset)
    assert str(err.value) == (
        "dataset 'pets': every image is in one class ('cat'); a classifier needs at least two classes"
    )


def test_too_few_images_per_class_to_split_says_which_class(tmp_path):
    images = np.zeros((12, 1, 4, 4), dtype=np.float32)
    message = "cannot split 12 images into train/val/test with every class in each split; images per class: "
    for count in (1, 2):  # sklearn refuses to stratify 1; with 2, a split would miss the class
        labels = np.array([0] * (12 - count) + [1] * count)
        with pytest.raises(sources.DatasetError) as err:
            splits.split_arrays(images, labels, 0.15, 0.2, seed=0, classes=["cat", "dog"])
        assert str(err.value) == (
            f"{message}{{'cat': {12 - count}, 'dog': {count}}}; add images to the small classes "
            f"(smallest: 'dog', {count} image{'s' if count > 1 else ''})"
        )


def test_imagefolder_without_class_folders_says_what_is_expected(tmp_path):
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(sources.DatasetError, match="expected root/<class>/<image>"):
        sources.load_imagefolder_source(str(tmp_path))


def test_imagefolder_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(sources.DatasetError, match="nope.*does not exist"):
        sources.load_imagefolder_source(str(missing))


def test_torchvision_missing_root_without_download(tmp_path):
    with pytest.raises(sources.DatasetError, match="does not exist.*download: true"):
        sources.load_torchvision_source("CIFAR10", str(tmp_path / "cifar"), download=False)


def write_mnist_root(root, train_labels, test_labels):
    """A real MNIST on-disk layout (raw idx files), written by hand with white 28x28 images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, magic, array):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        idx(raw / f"{prefix}-images-idx3-ubyte", 2051, np.full((len(labels), 28, 28), 255))
        idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, np.asarray(labels))


def test_torchvision_reads_a_local_mnist_root(tmp_path):
    write_mnist_root(tmp_path, [0, 1, 0, 1], [0, 1])
    images, labels, classes = sources.load_torchvision_source("MNIST", str(tmp_path), download=False)
    assert images.shape == (6, 1, 28, 28)
    assert images.dtype == np.uint8 and images.max() == 255
    assert list(labels) == [0, 1, 0, 1, 0, 1]
    assert len(classes) == 10


def test_labels_outside_the_classes_are_rejected(tmp_path):
    write_mnist_root(tmp_path, [0, 1, 12, 1], [0, 1])
    dataset = {"name": "MNIST", "source": "torchvision", "root": str(tmp_path), "download": False}
    with pytest.raises(sources.DatasetError) as err:
        sources.load_source(dataset)
    assert str(err.value) == (
        "dataset 'MNIST': 1 labels are outside the 10 classes 0..9 (first: label 12 of MNIST:2); "
        "fix the labels or the class list"
    )


def write_cifar10_root(root, train_labels, test_labels):
    """The CIFAR-10 python layout torchvision reads (cifar-10-batches-py: pickled batches of
    uint8 rows, 3x32x32 each, and batches.meta), written by hand with a flat colour per class."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(labels):
        rows = np.stack([np.full(3 * 32 * 32, 20 * label + 10, dtype=np.uint8) for label in labels])
        return {"data": rows, "labels": list(labels)}  # str keys, as the Python 2 originals load

    per_batch = np.array_split(np.asarray(train_labels), 5)
    for number, labels in enumerate(per_batch, start=1):
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch(labels.tolist())))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(list(test_labels))))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10_root_in_torchvision_format_is_prepared_as_uint8(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # torchvision checks the official files' md5 sums; these files are ours, in the same format.
    from joulebench import store
    from joulebench.data.prepared import prepared_files
    from joulebench.data.stages import prepare_dataset

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    labels = [label for label in range(3) for _ in range(10)]
    write_cifar10_root(tmp_path / "cifar", labels, [0, 1, 2] * 3)
    dataset = {"name": "CIFAR10", "source": "torchvision", "root": str(tmp_path / "cifar"), "download": False}
    dataset |= {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}
    out = prepared_files(tmp_path)
    prepare_dataset({}, out, dataset, True, {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725})
    stored = store.open_arrays(out["splits"])
    assert stored["train_x"].dtype == np.uint8 and stored["train_x"].shape[1:] == (3, 32, 32)
    assert int(stored["pixel_max"]) == 255
    facts = store.read_json(out["facts"])
    assert facts["classes"][:3] == ["airplane", "automobile", "bird"] and facts["num_classes"] == 10
    assert sum(facts[f"{s}_count"] for s in splits.SPLITS) == 39
    # Each image keeps its class colour: uint8 20 * label + 10, float (20 * label + 10) / 255.
    floats = store.load_arrays(out["splits"])
    expected = (20 * floats["train_y"] + 10).astype(np.float32) / np.float32(255)
    assert np.array_equal(floats["train_x"][:, 0, 0, 0], expected)


def test_uint8_loader_gives_the_float_batches_bit_for_bit(tmp_path, digits_arrays):
    from joulebench import store

    arrays, _ = digits_arrays
    stored = {key: value for key, value in arrays.items()}
    for split in splits.SPLITS:
        stored[f"{split}_x"] = np.rint(arrays[f"{split}_x"] * 16).astype(np.uint8)
    store.save_arrays(tmp_path / "splits.npz", {**stored, "pixel_max": np.asarray(16)})
    mapped = store.open_arrays(tmp_path / "splits.npz")
    assert isinstance(mapped["train_x"], np.memmap) and mapped["train_x"].dtype == np.uint8
    for shuffle in (False, True):
        floats = loader.loader(arrays, "train", 64, shuffle=shuffle, seed=3)
        uint8s = loader.loader(mapped, "train", 64, shuffle=shuffle, seed=3)
        for (x_float, y_float), (x_uint8, y_uint8) in zip(floats, uint8s, strict=True):
            assert x_uint8.dtype == torch.float32 and torch.equal(x_float, x_uint8)
            assert torch.equal(y_float, y_uint8)
    workers = loader.loader(mapped, "val", 100, workers=2)
    assert sum(len(y) for _, y in workers) == len(arrays["val_y"])


def test_a_batch_larger_than_the_training_split_is_an_error_naming_the_key(digits_arrays):
    from joulebench.models import build_model
    from joulebench.train.loop import TrainSettings, train

    arrays, _ = digits_arrays
    small = {**arrays, "train_x": arrays["train_x"][:40], "train_y": arrays["train_y"][:40]}
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "precision": "fp32"})
    with pytest.raises(sources.DatasetError) as err:
        train(model, small, TrainSettings(epochs=1, batch_size=64, lr=0.003), meter=None)
    assert str(err.value) == (
        "training.batch_size 64 is larger than the training split (40 images after splitting, "
        "cleaning and sampling); set training.batch_size to at most 40"
    )


@pytest.mark.slow  # a real run of the workflow: ~30 s
def test_mixed_size_image_folder_runs_end_to_end(tmp_path):
    """Real PNG, JPEG and BMP files of four sizes, grey and colour, through the whole workflow."""
    from conftest import run_snakemake, tiny_config
    from joulebench import store

    root = tmp_path / "photos"
    make_image_tree(root, {"cat": 12, "dog": 12})
    rng = np.random.default_rng(1)
    for name in ("cat", "dog"):
        for index, (height, width) in enumerate([(9, 14), (20, 11), (7, 7), (30, 30)]):
            pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"mixed{index}.{['png', 'jpg', 'bmp', 'png'][index]}")
        Image.fromarray(rng.integers(0, 255, size=(12, 5), dtype=np.uint8)).save(root / name / "grey.png")
    base = tiny_config()
    dataset = {**base["dataset"], "name": "photos", "source": "imagefolder", "root": str(root)}
    config = tiny_config(
        dataset=dataset | {"image_size": [8, 8], "resize": "pad"},
        variants={},
        training={**base["training"], "batch_size": 8},
    )
    run_snakemake(tmp_path / "run", config)
    results = tmp_path / "run" / "results"
    facts = store.read_json(results / "data" / "photos" / "dataset.json")
    assert facts["image_size"] == [8, 8] and facts["channels"] == 3
    raw = store.read_json(results / "data" / "photos" / "raw" / "dataset.json")
    assert sum(raw[f"{s}_count"] for s in splits.SPLITS) == 2 * (12 + 5)  # none dropped
    assert list(results.rglob("metrics.json"))


def test_batches_are_pinned_only_for_a_cuda_device(digits_arrays, monkeypatch):
    # MOCK: torch says CUDA exists. Pinning for a CPU placement would create a CUDA context inside
    # a CPU rule's energy window; the loader must not even ask.
    asked = mock.MagicMock(return_value=True)
    monkeypatch.setattr(torch.cuda, "is_available", asked)
    arrays, _ = digits_arrays
    assert loader.loader(arrays, "val", 64).pin_memory is False
    assert loader.loader(arrays, "val", 64, device=torch.device("cpu"), workers=2).pin_memory is False
    assert asked.call_count == 0
    assert loader.loader(arrays, "val", 64, device=torch.device("cuda", 1)).pin_memory is True


def test_loader_workers_load_every_batch_and_stop_with_the_loader(digits_arrays):
    arrays, _ = digits_arrays
    before = set(multiprocessing.active_children())
    batches = loader.loader(arrays, "train", 100, shuffle=True, workers=2)
    with loader.workers_stopped(batches):
        for _ in range(2):  # persistent workers serve every epoch
            assert sum(len(labels) for _, labels in batches) == len(arrays["train_y"])
        assert len(set(multiprocessing.active_children()) - before) == 2
    assert set(multiprocessing.active_children()) - before == set()
    loader.stop_workers(loader.loader(arrays, "val", 64))  # a loader without workers: nothing to stop
