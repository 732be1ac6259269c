"""Training subsets: exact stratification, repeatable random picks, EL2N from a real proxy run."""

import numpy as np
import pytest

from joulebench import store
from joulebench.config import resolved_config
from joulebench.data import sample
from joulebench.data.stages import sample_dataset

ENERGY = {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}
TRAINING = {**resolved_config()["training"], "epochs": 1}


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.73])
def test_stratified_subset_has_exactly_round_fraction_of_every_class(fraction):
    labels = np.repeat(np.arange(5), [3, 17, 40, 101, 250])
    chosen = sample.stratified_subset(labels, fraction, seed=0)
    assert len(set(chosen)) == len(chosen)
    counts = np.bincount(labels[chosen], minlength=5)
    expected = [max(1, int(np.floor(fraction * n + 0.5))) for n in (3, 17, 40, 101, 250)]
    assert counts.tolist() == expected


def test_random_subset_is_repeatable_and_sized():
    labels = np.arange(1000) % 7
    first = sample.random_subset(labels, 0.3, seed=4)
    assert len(first) == 300 and len(set(first)) == 300
    assert np.array_equal(first, sample.random_subset(labels, 0.3, seed=4))
    assert not np.array_equal(first, sample.random_subset(labels, 0.3, seed=5))


def test_highest_scores_keeps_the_hardest_with_ties_by_index():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert sample.highest_scores(scores, 0.4).tolist() == [1, 3]
    assert sample.highest_scores(scores, 0.6).tolist() == [1, 2, 3]


def write_digits_splits(tmp_path, digits_arrays):
    arrays, classes = digits_arrays
    splits, facts = tmp_path / "splits.npz", tmp_path / "dataset.json"
    store.save_arrays(splits, arrays)
    store.write_json(facts, {"channels": 1, "num_classes": len(classes), "image_size": [8, 8]})
    return splits, facts


@pytest.mark.parametrize("method", ["stratified", "el2n"])
def test_sample_dataset_writes_subset_balance_and_energy(tmp_path, digits_arrays, method):
    splits, facts = write_digits_splits(tmp_path, digits_arrays)
    variant = {
        "technique": "subset",
        "fraction": 0.5,
        "method": method,
        "proxy_model": "small_cnn",
        "proxy_epochs": 1,
    }
    out = {
        key: tmp_path / name
        for key, name in (("splits", "s.npz"), ("summary", "s.json"), ("energy", "e.json"))
    }
    sample_dataset({"splits": splits, "facts": facts}, out, "subset50", variant, TRAINING, 0, ENERGY)
    full, subset, summary = (
        store.load_arrays(splits),
        store.load_arrays(out["splits"]),
        store.read_json(out["summary"]),
    )
    if method == "stratified":  # rounded per class, so the total can differ from 0.5 * N
        per_class = [sample.subset_size(n, 0.5) for n in np.bincount(full["train_y"])]
        assert np.bincount(subset["train_y"]).tolist() == per_class
    else:
        assert len(subset["train_y"]) == sample.subset_size(len(full["train_y"]), 0.5)
    for split in ("val", "test"):
        assert np.array_equal(subset[f"{split}_x"], full[f"{split}_x"])
    assert (summary["variant"], summary["seed"]) == ("subset50", 0)  # the report reads them here
    kept = summary["diversity"]
    assert kept["sampled"]["images"] == len(subset["train_y"]) == summary["after"]["count"]
    assert kept["sampled"]["vendi_score"] > 1.0 and kept["cleaned"]["class_evenness"] > 0.99
    # Subset rows are real training rows (same image under the same source id).
    position = {int(i): k for k, i in enumerate(full["train_id"])}
    rows = [position[int(i)] for i in subset["train_id"]]
    assert np.array_equal(full["train_x"][rows], subset["train_x"])
    assert summary["before"]["class_counts"] == np.bincount(full["train_y"]).tolist()
    assert summary["after"]["class_counts"] == np.bincount(subset["train_y"], minlength=10).tolist()
    record = store.read_json(out["energy"])
    assert record["rule"] == "sample_dataset" and record["joules"] > 0
    if method == "el2n":
        # The proxy run is metered inside this rule: one epoch window and the scoring window.
        assert {"epoch1", "score"} <= {window["window"] for window in record["windows"]}
        assert summary["proxy"]["epochs"] == 1
        assert summary["score_kept_min"] >= summary["score_all_median"]


def test_el2n_is_high_for_misclassified_images(digits_arrays):
    import torch

    from joulebench.models import build_model
    from joulebench.train.loop import TrainSettings, seed_everything, train

    arrays, _ = digits_arrays
    seed_everything(0)
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "precision": "fp32"})

    from joulebench.devices import CPU

    class NoMeter:
        """No energy here: this test checks the score, not the measurement."""

        placement = CPU

        def window(self, name):
            from contextlib import nullcontext

            return nullcontext(type("W", (), {"record": {"joules": 0.0, "source": "none"}})())

    train(model, arrays, TrainSettings(epochs=1, batch_size=64, lr=0.003), NoMeter())
    scores = sample.el2n_scores(model, arrays)
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(arrays["train_x"])).argmax(1).numpy()
    wrong = predicted != arrays["train_y"]
    assert wrong.any() and (~wrong).any()
    # ||p - onehot|| >= sqrt(1/2) whenever the argmax is wrong, and wrong images score higher.
    assert scores[wrong].min() >= np.sqrt(0.5) - 1e-6
    assert scores[wrong].mean() > scores[~wrong].mean()


@pytest.mark.slow
def test_workflow_cleans_samples_and_charges_the_subset_its_sampling(tiny_run):
    import pandas as pd

    workdir, config, _ = tiny_run
    data_dir = workdir / "results/data/digits"
    report = store.read_json(data_dir / "cleaning_report.json")
    removed = pd.read_csv(data_dir / "removed.csv")
    assert report["removed_total"] == len(removed)
    raw, cleaned = store.load_arrays(data_dir / "raw/splits.npz"), store.load_arrays(data_dir / "splits.npz")
    for split in ("train", "val", "test"):
        gone = (removed["split"] == split).sum()
        assert len(cleaned[f"{split}_y"]) == len(raw[f"{split}_y"]) - gone
    assert (data_dir / "augmentation.png").stat().st_size > 0
    (variant,) = [name for name, v in config["variants"].items() if v["technique"] == "subset"]
    sampling = store.read_json(data_dir / f"subsets/{variant}/seed0/energy.json")
    table = pd.read_csv(workdir / "results/report/results.csv").set_index("variant")
    baseline, subset = table.loc["baseline"], table.loc[variant]
    # Same data preparation and cleaning for both; the subset also carries its sampling rule.
    assert subset["energy_data_j"] == pytest.approx(baseline["energy_data_j"] + sampling["joules"])
    assert subset["producing_rule"] == "train_model" and pd.isna(subset["parent"])
