"""The data rules' stages: prepare, clean, sample and augment the dataset."""

import logging

import numpy as np
import torch

from joulebench import store
from joulebench.data import diversity, sources, splits
from joulebench.devices import CPU, placement_on
from joulebench.energy.meter import rule_meter
from joulebench.run.lazy_import import pandas as pd
from joulebench.run.prepare import import_before_window
from joulebench.train import loop
from joulebench.train.overrides import pinned_device

log = logging.getLogger(__name__)


def prepare_dataset(inputs: dict, outputs: dict, dataset: dict, skip_unusable: bool, estimate: dict) -> None:
    """Load and split the source; with `skip_unusable` (cleaning on) unusable files are listed in
    `rejected` instead of being fatal. Image files are decoded in the job's threads."""
    sources.import_loaders(dataset)
    with rule_meter("prepare_dataset", estimate) as meter, meter.window("load_and_split"):
        source = sources.load_source(dataset, skip_unusable=skip_unusable, workers=torch.get_num_threads())
        arrays = splits.split_arrays(
            source.images,
            source.labels,
            dataset["val_fraction"],
            dataset["test_fraction"],
            dataset["split_seed"],
            source.classes,
        )
    facts = splits.describe(arrays, source.classes)
    log.info("dataset %s: %s", dataset["name"], {k: facts[f"{k}_count"] for k in splits.SPLITS})
    # Names let the cleaning report point at the file (or source index) of every removed image.
    names = np.asarray(source.names, dtype=str)
    pixel_max = np.asarray(source.pixel_max)
    store.save_arrays(outputs["splits"], {**arrays, "item_names": names, "pixel_max": pixel_max})
    store.write_json(outputs["facts"], facts)
    store.write_csv(outputs["rejected"], pd.DataFrame(source.rejected, columns=["item", "reason", "detail"]))
    store.write_json(outputs["energy"], meter.record())


def clean_dataset(inputs: dict, outputs: dict, cleaning: dict, estimate: dict) -> None:
    """Drop duplicates, leaks and conflicting labels; report every removed item with its reason."""
    from joulebench.data import clean

    raw = dict(store.open_arrays(inputs["splits"]))
    names = [str(name) for name in raw.pop("item_names")]
    classes = store.read_json(inputs["facts"])["classes"]
    settings = {k: v for k, v in cleaning.items() if k != "examples_per_reason"}
    chosen, lookalikes = {}, []
    import_before_window(clean.WORK_MODULES)
    with rule_meter("clean_dataset", estimate) as meter, meter.window("find_duplicates"):
        if cleaning["enabled"]:
            arrays, removed = clean.clean_splits(
                raw, names, settings, torch.get_num_threads(), chosen, lookalikes
            )
        else:
            arrays, removed = raw, []
    # Files the loader could not use were left out before the split; they are removed items too.
    for rejected in pd.read_csv(inputs["rejected"]).to_dict("records"):
        removed.append({"split": "source", **rejected})
    report = clean.cleaning_report(raw, arrays, removed, settings, cleaning["examples_per_reason"])
    report["near_duplicate_thresholds"] = chosen or None
    report["lookalike_pairs"] = len(lookalikes)
    # Diversity of the training split before and after cleaning (data optimisation should keep D1 >= D0).
    report["diversity"] = diversity.diversity_of_stages(
        {
            name: (stage_arrays["train_x"], stage_arrays["train_y"])
            for name, stage_arrays in (("raw", raw), ("cleaned", arrays))
        },
        len(classes),
    )
    report["throughput_images_per_s"] = sum(report["before"][s]["count"] for s in splits.SPLITS) / max(
        meter.record()["wall_time_s"], 1e-9
    )
    log.info("removed %s: %s", sources.image_count(len(removed)), report["removed_by_reason"])
    store.save_arrays(outputs["splits"], {**arrays, "item_names": np.asarray(names, dtype=str)})
    store.write_json(outputs["facts"], splits.describe(arrays, classes))
    store.write_json(outputs["report"], report)
    store.write_csv(outputs["removed"], clean.removed_frame(removed))
    store.write_csv(outputs["lookalikes"], clean.lookalike_frame(lookalikes))
    store.write_json(outputs["energy"], meter.record())


def sample_dataset(
    inputs: dict,
    outputs: dict,
    variant_name: str,
    variant: dict,
    training: dict,
    seed: int,
    estimate: dict,
) -> None:
    """A training subset by `variant["method"]` (joulebench.data.sample); a scoring method's proxy run
    is metered here, where the variant is pinned, else on the GPU where there is one. The summary
    names its variant and seed, for the report."""
    from joulebench.data import sample

    arrays, facts = store.open_arrays(inputs["splits"]), store.read_json(inputs["facts"])
    labels, num_classes = arrays["train_y"], facts["num_classes"]
    placement = CPU if variant["method"] in ("random", "stratified") else placement_on(pinned_device(variant))
    import_before_window([*loop.WORK_MODULES, *sample.WORK_MODULES] if variant["method"] == "el2n" else [])
    with rule_meter("sample_dataset", estimate, placement) as meter:
        chosen, choice = sample.select_subset(arrays, facts, variant, training, seed, meter)
    subset = sample.take_train_subset(arrays, chosen)
    summary = {
        "variant": variant_name,
        "method": variant["method"],
        "fraction": variant["fraction"],
        "seed": seed,
        **choice,
        "before": sample.class_balance(labels, num_classes),
        "after": sample.class_balance(subset["train_y"], num_classes),
        "diversity": diversity.diversity_of_stages(
            {"cleaned": (arrays["train_x"], labels), "sampled": (subset["train_x"], subset["train_y"])},
            num_classes,
        ),
    }
    log.info(
        "subset %s: %d of %s", variant["method"], len(chosen), sources.image_count(len(labels), "training")
    )
    store.save_arrays(outputs["splits"], subset)
    store.write_json(outputs["summary"], summary)
    store.write_json(outputs["energy"], meter.record())


def plot_augmentation(inputs: dict, outputs: dict, transforms: list, samples: int) -> None:
    """A figure of training images and their augmentations (the first `samples` of the split)."""
    from joulebench.data import augment

    images = store.load_arrays(inputs["splits"])["train_x"][:samples]
    augment.plot_samples(images, transforms, seed=0, path=outputs["png"])


def augment_dataset(
    inputs: dict, outputs: dict, transforms: list, copies: int, seed: int, estimate: dict
) -> None:
    """Offline augmentation: the splits with `copies` augmented copies of train appended."""
    from joulebench.data import augment

    arrays = store.load_arrays(inputs["splits"])
    with rule_meter("augment_dataset", estimate) as meter, meter.window("augment"):
        augmented = augment.materialize(arrays, transforms, copies, seed)
    log.info("training images: %d -> %d", len(arrays["train_y"]), len(augmented["train_y"]))
    store.save_arrays(outputs["splits"], augmented)
    store.write_json(outputs["energy"], meter.record())
