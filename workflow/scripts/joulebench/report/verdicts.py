"""A verdict on one paired comparison: saves, costs more, or no clear difference, in words."""

import math

from joulebench.report.stats import pairs_behind


def _change_phrase(pair, column: str, subject: str) -> str:
    """'saves 22% of <subject>', 'does **not** save <subject> (+16%)', or, where the paired
    interval includes zero, that the seeds cannot tell the variant from the baseline."""
    change = pair[f"{column}_change"]
    if pairs_behind(pair, column) < 2:
        qualifier = " (one seed, no interval)"
    elif not pair[f"{column}_clear"]:
        return f"no clear difference in {subject} ({change:+.0%}, but the 95% interval includes 0)"
    else:
        qualifier = ""
    if change < 0:
        return f"saves {-change:.0%} of {subject}{qualifier}"
    return f"does **not** save {subject} ({change:+.0%}){qualifier}"


def crosses_devices(row, column: str) -> bool:
    """Whether a device pair (report_stats.device_pair) compares two device classes."""
    return " vs " in str(row.get(column, ""))


def verdict(pair) -> str:
    """One sentence per variant from its paired differences with the baseline (paired_differences):
    does it save energy to produce, inference energy, at what accuracy, and can the seeds tell?"""
    produce = _change_phrase(pair, "pipeline_energy_j", "the energy to produce")
    if crosses_devices(pair, "training_devices"):
        produce += f" (across devices: trained on {pair['training_devices']})"
    if crosses_devices(pair, "pipeline_boundaries"):
        produce += f" (not like for like: the figures cover {pair['pipeline_boundaries']})"
    inference = _change_phrase(pair, "inference_joules_per_1k", "inference energy")
    if crosses_devices(pair, "inference_devices"):
        inference += f" (not like for like: inference on {pair['inference_devices']})"
    elif crosses_devices(pair, "inference_boundaries"):
        inference += f" (not like for like: the figures cover {pair['inference_boundaries']})"
    accuracy = f"accuracy {pair['test_accuracy_diff'] * 100:+.2f}"
    if pair["test_accuracy_diff_ci95"] is not None and not math.isnan(pair["test_accuracy_diff_ci95"]):
        accuracy += f" ± {pair['test_accuracy_diff_ci95'] * 100:.2f}"
    return f"- **{pair['variant']}** ({pair['model']}) {produce}, {inference}, {accuracy} points."
