"""The one module that knows how variants are made: names, parents, lineage, config errors."""

from joulebench.variants import (
    BASELINE,
    from_scratch,
    is_int8,
    lineage,
    lineage_error,
    made_by,
    names,
    on_accelerator,
    parent,
    subset_source,
)

VARIANTS = {
    "half": {"technique": "subset", "fraction": 0.5, "method": "random"},
    "pruned_half": {"technique": "prune", "from": "half", "sparsity": 0.5, "finetune_epochs": 1},
    "int8": {"technique": "quantize", "method": "int8_dynamic", "from": "pruned_half"},
    "bf16": {"technique": "precision", "precision": "bf16"},
    "student": {"technique": "distill", "student_width": 8},
}


def test_names_and_techniques():
    assert names(VARIANTS) == [BASELINE, "half", "pruned_half", "int8", "bf16", "student"]
    assert made_by(VARIANTS, "baseline", "precision") == [BASELINE, "bf16"]
    assert made_by(VARIANTS, "finetune") == []
    assert [from_scratch(VARIANTS, name) for name in names(VARIANTS)] == [
        True,
        True,
        False,
        False,
        True,
        False,
    ]


def test_parent_and_lineage_end_at_a_model_trained_from_scratch():
    assert parent(VARIANTS, "student") == BASELINE  # `from` defaults to the baseline
    assert parent(VARIANTS, "bf16") is None and parent(VARIANTS, BASELINE) is None
    assert lineage(VARIANTS, "int8") == ["int8", "pruned_half", "half"]
    assert lineage(VARIANTS, "student") == ["student", BASELINE]


def test_a_cpu_pin_at_the_root_holds_for_every_model_made_from_it():
    pinned = {
        "cpu": {"technique": "device", "device": "cpu"},
        "cpu_pruned": {"technique": "prune", "from": "cpu", "sparsity": 0.5, "finetune_epochs": 1},
        **VARIANTS,
    }
    assert [on_accelerator(pinned, name) for name in ("cpu", "cpu_pruned", BASELINE, "int8")] == [
        False,
        False,
        True,
        True,
    ]


def test_a_model_is_int8_after_a_quantize_step_unless_a_distillation_follows_it():
    distilled = {**VARIANTS, "student_of_int8": {"technique": "distill", "from": "int8", "student_width": 8}}
    assert [is_int8(distilled, name) for name in ("int8", "pruned_half", "student_of_int8", BASELINE)] == [
        True,
        False,
        False,
        False,
    ]


def test_subset_source_is_the_subset_at_the_root_of_the_lineage():
    assert subset_source(VARIANTS, "int8") == "half"
    assert subset_source(VARIANTS, "half") == "half"
    assert subset_source(VARIANTS, "student") is None and subset_source(VARIANTS, BASELINE) is None


def test_lineage_errors_name_the_key_and_what_to_do():
    assert all(lineage_error(VARIANTS, name) is None for name in VARIANTS)
    unknown = {"a": {"technique": "prune", "from": "gone"}}
    assert lineage_error(unknown, "a") == "variants.a.from: unknown variant 'gone'; use baseline"
    cycle = {"a": {"technique": "prune", "from": "b"}, "b": {"technique": "quantize", "from": "a"}}
    assert lineage_error(cycle, "a") == "variants.a.from: the chain a -> b -> a is a cycle"
    capped = {
        "capped": {"technique": "power_limit", "power_limit_w": 200},
        "a": {"technique": "prune", "from": "capped"},
    }
    assert "capped needs a GPU (power_limit), so it is skipped on hosts without one" in lineage_error(
        capped, "a"
    )
