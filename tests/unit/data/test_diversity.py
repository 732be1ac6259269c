"""Diversity indices: class entropy and the Vendi score behave as their definitions say."""

import numpy as np

from joulebench.data import diversity, sources


def test_vendi_score_counts_effectively_distinct_images():
    identical = np.repeat(np.eye(5)[:1], 50, axis=0)
    assert np.isclose(diversity.vendi_score(identical), 1.0)
    orthogonal = np.eye(5)
    assert np.isclose(diversity.vendi_score(orthogonal), 5.0)
    two_groups = np.concatenate([np.repeat(np.eye(5)[:1], 10, axis=0), np.repeat(np.eye(5)[1:2], 10, axis=0)])
    assert np.isclose(diversity.vendi_score(two_groups), 2.0)


def test_class_entropy_is_one_when_balanced_and_lower_when_not():
    assert np.isclose(diversity.class_entropy(np.repeat(np.arange(4), 5), 4)["class_evenness"], 1.0)
    skewed = diversity.class_entropy(np.array([0] * 18 + [1, 2]), 4)
    assert 0 < skewed["class_evenness"] < 0.5


def test_digits_are_more_diverse_than_a_subset_of_one_class():
    images, labels, _ = sources.load_digits_source()
    everything = diversity.diversity(images, labels, 10)
    ones = diversity.diversity(images[labels == 1], labels[labels == 1], 10)
    assert everything["vendi_sample"] == diversity.SAMPLE and everything["class_evenness"] > 0.99
    assert everything["vendi_score"] > ones["vendi_score"] > 1.0
    assert ones["class_evenness"] == 0.0


def test_compared_stages_are_scored_on_samples_of_one_size():
    images, labels, _ = sources.load_digits_source()
    chosen = np.sort(np.random.default_rng(1).choice(len(labels), 584, replace=False))
    stages = diversity.diversity_of_stages(
        {"cleaned": (images, labels), "sampled": (images[chosen], labels[chosen])}, 10
    )
    # The smaller stage's size: all 584 sampled images against 584 of the cleaned 1,797.
    assert stages["cleaned"]["vendi_sample"] == stages["sampled"]["vendi_sample"] == 584
    assert stages["cleaned"]["images"] == len(labels)
    assert (
        stages["sampled"]["vendi_score"]
        == diversity.diversity(images[chosen], labels[chosen], 10)["vendi_score"]
    )
    # Stages larger than SAMPLE are each scored on SAMPLE images.
    both = diversity.diversity_of_stages({"raw": (images, labels), "cleaned": (images[:-6], labels[:-6])}, 10)
    assert {stage["vendi_sample"] for stage in both.values()} == {diversity.SAMPLE}
