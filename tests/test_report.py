import itertools
import random

import pytest

from joulebench.report import lineage, pareto_mask, pipeline_joules

VARIANTS = {
    "prune80": {"technique": "prune", "sparsity": 0.8},
    "int8_of_prune": {"technique": "quantize", "from": "prune80"},
    "fp16": {"technique": "precision"},
}


def brute_force_pareto(points):
    """Definition: a point is optimal if no other is at least as good in both and better in one."""
    optimal = []
    for i, (a, e) in enumerate(points):
        dominated = False
        for j, (a2, e2) in enumerate(points):
            if i != j and a2 >= a and e2 <= e and (a2, e2) != (a, e):
                dominated = True
        optimal.append(not dominated)
    return optimal


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_matches_brute_force(seed):
    rng = random.Random(seed)
    points = [
        (rng.choice([0.9, 0.95, 0.97, rng.random()]), rng.choice([10.0, 20.0, rng.random() * 30]))
        for _ in range(12)
    ]
    accuracy, energy = zip(*points, strict=True)
    assert pareto_mask(accuracy, energy) == brute_force_pareto(points)


def test_lineage_and_pipeline_energy_follow_chains():
    assert lineage("int8_of_prune", VARIANTS) == ["int8_of_prune", "prune80", "baseline"]
    assert lineage("fp16", VARIANTS) == ["fp16"]  # trained from scratch
    own = {(v, 0): {"joules": j} for v, j in [("baseline", 100.0), ("prune80", 30.0), ("int8_of_prune", 2.0)]}
    assert pipeline_joules("int8_of_prune", 0, own, VARIANTS, data_joules=5.0) == pytest.approx(137.0)
    assert pipeline_joules("baseline", 0, own, VARIANTS, data_joules=5.0) == pytest.approx(105.0)


def test_pareto_ties_are_all_optimal():
    assert pareto_mask([0.9, 0.9], [5.0, 5.0]) == [True, True]
    assert list(itertools.compress("ab", pareto_mask([0.9, 0.8], [5.0, 5.0]))) == ["a"]
