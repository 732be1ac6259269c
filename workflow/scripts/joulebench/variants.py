"""The experiment's variants and how each one is made: the one place that knows the baseline's
name, which techniques train from scratch, a variant's parent and its lineage.

The rules (workflow/rules/common.smk), the config checks (joulebench.config) and the report
(joulebench.report.aggregate) all ask here. `variants` is config `variants`: name -> settings, each with a
`technique` and, for a model made from another, `from` (default: the baseline). Torch-free.
"""

import difflib

from joulebench.train.overrides import needs_gpu, pinned_device

BASELINE = "baseline"

# Techniques whose models the train_model rule trains from scratch; the baseline's own is "baseline".
# A variant of any other technique (prune, quantize, distill) is made from a parent model.
FROM_SCRATCH = (
    BASELINE,
    "precision",
    "subset",
    "finetune",
    "batch_size",
    "power_limit",
    "threads",
    "data_parallel",
    "device",
)


def names(variants: dict) -> list[str]:
    """Every variant of the experiment, the baseline first."""
    return [BASELINE, *variants]


def technique(variants: dict, name: str) -> str:
    return BASELINE if name == BASELINE else variants[name]["technique"]


def made_by(variants: dict, *techniques: str) -> list[str]:
    """The variants made by these techniques ("baseline" is the baseline's)."""
    return [name for name in names(variants) if technique(variants, name) in techniques]


def from_scratch(variants: dict, name: str) -> bool:
    return technique(variants, name) in FROM_SCRATCH


def parent(variants: dict, name: str) -> str | None:
    """The variant this one is made from; None for a model trained from scratch."""
    if from_scratch(variants, name):
        return None
    return variants[name].get("from", BASELINE)


def lineage(variants: dict, name: str) -> list[str]:
    """The variant and every variant it is made from, back to one trained from scratch."""
    chain = [name]
    while (step := parent(variants, chain[-1])) is not None:
        chain.append(step)
    return chain


def on_accelerator(variants: dict, name: str) -> bool:
    """Whether the models of a variant's lineage compute on the accelerator: all but those of a
    lineage whose from-scratch root is pinned to the CPU (a pin holds for every model made from
    the pinned one, joulebench.train.overrides)."""
    root = lineage(variants, name)[-1]
    return pinned_device(variants.get(root, {})) != "cpu"


def is_int8(variants: dict, name: str) -> bool:
    """Whether a variant's model is int8: a quantize step in its lineage after the last
    distillation (which trains a new float student)."""
    for step in lineage(variants, name):
        if technique(variants, step) == "quantize":
            return True
        if technique(variants, step) == "distill":
            return False
    return False


def subset_source(variants: dict, name: str) -> str | None:
    """The subset variant whose sampled training split this variant's lineage starts from, if any."""
    root = lineage(variants, name)[-1]
    return root if technique(variants, root) == "subset" else None


def lineage_error(variants: dict, name: str) -> str | None:
    """Why `name`'s `from` chain cannot be built (unknown parent, a cycle, a parent skipped on
    hosts without a GPU: a power limit, a cuda pin), or None. The message names the key and what to do."""
    seen = [name]
    step = parent(variants, name)
    while step is not None and step != BASELINE:
        if step not in variants:
            return unknown_parent_error(variants, seen[-1], step)
        if needs_gpu(variants[step]):
            pin = ", device: cuda" if variants[step].get("device") else ""
            return (
                f"variants.{seen[-1]}.from: {step} needs a GPU ({technique(variants, step)}{pin}), so it "
                "is skipped on hosts without one and nothing can start from it; start from baseline"
            )
        if step in seen:
            return f"variants.{name}.from: the chain {' -> '.join([*seen, step])} is a cycle"
        seen.append(step)
        step = parent(variants, step)
    return None


def unknown_parent_error(variants: dict, name: str, unknown: str) -> str:
    choices = possible_parents(variants, name)
    close = difflib.get_close_matches(unknown, choices, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    others = f" or one of {choices[1:]}" if len(choices) > 1 else ""
    return f"variants.{name}.from: unknown variant {unknown!r}; {hint}use baseline{others}"


def possible_parents(variants: dict, name: str) -> list[str]:
    """What variant `name` can start from: the baseline and every other variant that runs on every
    host and is not made from `name` (that would be a cycle)."""
    others = [
        other
        for other in sorted(variants)
        if other != name and not needs_gpu(variants[other]) and not made_from(variants, other, name)
    ]
    return [BASELINE, *others]


def made_from(variants: dict, name: str, ancestor: str) -> bool:
    """Whether `ancestor` is in `name`'s `from` chain; a chain through an unknown variant or a cycle
    ends there (lineage_error names those)."""
    seen = {name}
    step = parent(variants, name)
    while step in variants and step not in seen:
        if step == ancestor:
            return True
        seen.add(step)
        step = parent(variants, step)
    return False
