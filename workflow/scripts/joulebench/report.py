"""Aggregate energy records and evaluations into one tidy table, then write the whole report.

The table has one row per (model, variant, seed). Energy is attributed to pipeline stages by the
rule that made each record: data (dataset rules), train (a from-scratch training run),
compress (every rule that makes a model from another: pruning + fine-tuning, quantization,
distillation) and evaluate. Statistics, decisions, figures and paper tables are in the
report_* modules; write_report ties them together.
"""

import logging
from pathlib import Path

import pandas as pd

from joulebench import io, report_decisions, report_figures, report_stats, report_tables
from joulebench.energy_columns import EnergyColumns
from joulebench.protocol import median_and_spread

log = logging.getLogger(__name__)

BASELINE = "baseline"


# Rules that train a model from scratch: its lineage stops there (the baseline, precision variants
# and any other variant train_model makes). Every other producing rule starts from a parent model.
FROM_SCRATCH_RULES = {"train_model"}
STAGES = ("data", "train", "compress", "evaluate")


def producing_stage(rule: str) -> str:
    return "train" if rule in FROM_SCRATCH_RULES else "compress"


def parent(variant: str, variants: dict, rule: str) -> str | None:
    """The variant this one is made from; None for a model that `rule` trained from scratch."""
    if variant == BASELINE or rule in FROM_SCRATCH_RULES:
        return None
    return variants[variant].get("from", BASELINE)


def lineage(variant: str, variants: dict, rule_of) -> list[str]:
    """The variant and every variant it was made from, back to one trained from scratch.

    `rule_of(variant)` names the rule that produced that variant's model (its record's `rule`).
    """
    chain = [variant]
    while (step := parent(chain[-1], variants, rule_of(chain[-1]))) is not None:
        chain.append(step)
    return chain


def split_skipped(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """(entries with results, skipped runs): a run whose model record says `skipped` (a variant
    this host could not run, e.g. a GPU power limit without a GPU) is listed, not tabulated."""
    kept, skipped = [], []
    for entry in entries:
        reason = io.read_json(entry["energy"]).get("skipped")
        if reason:
            keys = {k: entry[k] for k in ("dataset", "model", "variant", "seed")}
            skipped.append({**keys, "reason": reason})
        else:
            kept.append(entry)
    return kept, skipped


def training_device(record: dict) -> tuple[str, str]:
    """(cpu or cuda, its name): where a model was trained, from the energy record of the
    from-scratch training at the root of its lineage (a pruned or quantized model was trained where
    its baseline was; its compression step is in its own record). The record's placement says
    where the work ran: a GPU's NVML name where it was read, else the CPU's model name."""
    placement = record.get("placement", {})
    index = placement.get("gpu_cuda_index")
    if index is None:
        return "cpu", record.get("cpu_model", "")
    return "cuda", (record.get("gpu") or {}).get("name") or f"GPU {index}"


def stage_joules(data_records: list[dict], chain_records: list[dict], evaluation: dict | None) -> dict:
    """Joules per pipeline stage for one model: `energy_<stage>_j` columns.

    A pruned model cannot exist without the baseline it was pruned from, so its train stage is the
    baseline's training; its compress stage is the pruning and fine-tuning.
    """
    joules = {stage: 0.0 for stage in STAGES}
    for record in data_records:
        joules["data"] += record["joules"]
    for record in chain_records:
        joules[producing_stage(record["rule"])] += record["joules"]
    joules["evaluate"] = evaluation["joules"] if evaluation else None
    return {f"energy_{stage}_j": value for stage, value in joules.items()}


def build_table(
    entries: list[dict],
    variants: dict,
    data_energy: dict,
    energy_config: dict | None = None,
    idle: dict | None = None,
) -> pd.DataFrame:
    """One row per (model, variant, seed): metrics, energy and where each energy figure came from.

    `idle` is the optional idle-power record (config energy.idle_baseline_seconds).
    """
    own = {_key(e): io.read_json(e["energy"]) for e in entries}
    # Every energy record of the run by label, so contention is checked across all of them.
    labels = {_key(e): e["energy"] for e in entries}
    run_records = {"data": data_energy, **({"idle": idle} if idle else {})}
    # Entries may name their own data records (preparation, cleaning, a subset's sampling).
    data_paths = {path: io.read_json(path) for e in entries for path in e.get("data_energy", [])}
    if data_paths:
        run_records = {**data_paths, **({"idle": idle} if idle else {})}
    run_records |= {e["energy"]: own[_key(e)] for e in entries}
    run_records |= {e["eval_energy"]: io.read_json(e["eval_energy"]) for e in entries if "eval_energy" in e}
    run_records |= {
        e["compare_energy"]: io.read_json(e["compare_energy"]) for e in entries if "compare_energy" in e
    }
    rounds = read_rounds(entries)
    energy_columns = EnergyColumns(run_records, energy_config, idle)
    rows = []
    for entry in entries:
        model, variant, seed = entry["model"], entry["variant"], entry["seed"]
        metrics = io.read_json(entry["metrics"])
        record = own[(model, variant, seed)]
        chain = lineage(variant, variants, lambda step, m=model, s=seed: own[(m, step, s)]["rule"])
        lineage_records = [own[(model, step, seed)] for step in chain]
        data_labels = entry.get("data_energy", ["data"])
        data_records = [run_records[label] for label in data_labels]
        chain_records = [*lineage_records, *data_records]
        evaluation = run_records.get(entry.get("eval_energy"))
        stages = stage_joules(data_records, lineage_records, evaluation)
        pipeline = stages["energy_data_j"] + stages["energy_train_j"] + stages["energy_compress_j"]
        chain_labels = [labels[(model, step, seed)] for step in chain] + data_labels
        device, device_name = training_device(lineage_records[-1])  # the from-scratch root
        rows.append(
            {
                "dataset": entry["dataset"],
                "model": entry["model"],
                "variant": variant,
                "technique": variants.get(variant, {}).get("technique", "train"),
                "parent": chain[1] if len(chain) > 1 else None,
                "producing_rule": record["rule"],
                "training_device": device,
                "training_device_name": device_name,
                "seed": seed,
                **metrics,
                "own_energy_j": record["joules"],
                "own_energy_source": record["source"],
                "own_wall_time_s": record["wall_time_s"],
                **stages,
                "pipeline_energy_j": pipeline,
                # Wall time to produce: the same records as pipeline_energy_j, one after another.
                "pipeline_wall_time_s": sum(r["wall_time_s"] for r in chain_records),
                "pipeline_energy_measured": all(r["measured"] for r in chain_records),
                "pipeline_energy_sources": "+".join(sorted({r["source"] for r in chain_records})),
                **energy_columns.row(
                    labels[(model, variant, seed)], chain_labels, pipeline, entry.get("eval_energy")
                ),
                **interleaved_inference(rounds, entry, metrics),
            }
        )
    return pd.DataFrame(rows).sort_values(["model", "variant", "seed"]).reset_index(drop=True)


def read_rounds(entries: list[dict]) -> pd.DataFrame:
    """Every window of the interleaved inference comparisons (rule compare_inference), one row per
    (model, seed, round, variant); empty where the run has none."""
    frames = []
    for path in dict.fromkeys(e["compare"] for e in entries if "compare" in e):
        entry = next(e for e in entries if e.get("compare") == path)
        frames.append(
            pd.read_csv(path).assign(dataset=entry["dataset"], model=entry["model"], seed=entry["seed"])
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


DATA_STAGES = ["raw", "cleaned", "sampled"]
DIVERSITY_COLUMNS = [
    "data",
    "variant",
    "seed",
    "class_entropy_nats",
    "class_evenness",
    "vendi_score",
    "vendi_sample",
]


def read_diversity(paths) -> pd.DataFrame:
    """Diversity of the training data at each data stage: raw and cleaned (cleaning_report.json),
    and for each subset variant and seed the cleaned data it chose from and its sample
    (subset.json); joulebench.diversity made the numbers."""
    rows = []
    for path in paths:
        report = io.read_json(path)
        variant, seed = None, None
        if "method" in report:  # a subset variant's summary
            variant, seed = Path(path).parent.parent.name, report["seed"]
        stages = report.get("diversity", {})
        for data in sorted(stages, key=DATA_STAGES.index):
            rows.append({"data": data, "variant": variant, "seed": seed, **stages[data]})
    return pd.DataFrame(rows, columns=DIVERSITY_COLUMNS)


def interleaved_inference(rounds: pd.DataFrame, entry: dict, metrics: dict) -> dict:
    """The row's inference energy from the interleaved comparison: the median over its rounds and
    their interquartile range; the evaluation's own single window is kept beside it."""
    if rounds.empty:
        return {}
    mine = rounds[
        (rounds["model"] == entry["model"])
        & (rounds["seed"] == entry["seed"])
        & (rounds["variant"] == entry["variant"])
    ]
    if mine.empty:
        return {}
    median, spread = median_and_spread(list(mine["joules_per_1k"]))
    return {
        "eval_inference_joules_per_1k": metrics["inference_joules_per_1k"],
        "inference_joules_per_1k": median,
        "inference_joules_per_1k_iqr": spread,
        "inference_rounds": len(mine),
        "inference_energy_source": "+".join(sorted(set("+".join(mine["source"]).split("+")))),
        "inference_busy_host": bool(mine["busy_host"].any()),
    }


def _key(entry: dict) -> tuple:
    return entry["model"], entry["variant"], entry["seed"]


def read_histories(entries: list[dict], table: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation accuracy of every trained model, on an energy axis from raw data.

    history.csv is written by the same job as the model's energy.json (a rule input), so it exists
    exactly when that job trains; post-training rules (quantization) have none. Each curve is
    shifted by the energy spent before its rule started (data + its lineage), so a fine-tuned
    model's curve starts where its parent's ended.
    """
    rows = table.set_index(["model", "variant", "seed"])
    curves = []
    for entry in entries:
        path = Path(entry["energy"]).with_name("history.csv")
        if not path.exists():
            continue
        history = pd.read_csv(path)
        row = rows.loc[_key(entry)]
        before = row["pipeline_energy_j"] - row["own_energy_j"]
        curves.append(
            history.assign(
                model=entry["model"],
                variant=entry["variant"],
                seed=entry["seed"],
                energy_from_data_j=before + history["cumulative_joules"],
                measured=~history["energy_source"].str.contains("estimate"),
            )
        )
    columns = ["model", "variant", "seed", "epoch", "val_accuracy", "cumulative_joules", "energy_from_data_j"]
    if not curves:
        return pd.DataFrame(columns=[*columns, "measured"])
    return pd.concat(curves, ignore_index=True)


def write_report(
    table: pd.DataFrame,
    histories: pd.DataFrame,
    settings: dict,
    out_dir,
    rounds: pd.DataFrame | None = None,
    protocol: dict | None = None,
    skipped: list[dict] | None = None,
    diversity: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every report file under out_dir; `settings` is config `report` (targets, budgets,
    constraints, the time-energy cost).

    `rounds`: the interleaved comparisons' windows (read_rounds), on which the inference
    differences rest; `protocol`: the measurement protocol, printed in summary.md; `skipped`: the
    runs this host could not make (split_skipped); `diversity`: the data stages' diversity
    (read_diversity), in diversity.csv and summary.md.
    """
    diversity = diversity if diversity is not None else pd.DataFrame(columns=DIVERSITY_COLUMNS)
    out_dir = Path(out_dir)
    summary = report_stats.summarize(table)
    decisions = report_decisions.decide(summary, settings)
    decisions |= report_decisions.hardware_decisions(summary, settings)
    decisions["skipped"] = skipped or []
    break_even = report_decisions.break_even_table(summary)
    differences = report_stats.paired_differences(table, rounds)
    io.write_csv(out_dir / "results.csv", table)
    io.write_atomic(out_dir / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    io.write_csv(out_dir / "summary.csv", summary)
    io.write_csv(out_dir / "break_even.csv", break_even)
    io.write_csv(out_dir / "differences.csv", differences)
    io.write_csv(out_dir / "training_curves.csv", histories)
    io.write_csv(out_dir / "diversity.csv", diversity)
    io.write_json(out_dir / "decisions.json", decisions)
    report_figures.write_figures(summary, histories, out_dir)
    header, rows, footnotes = report_tables.paper_table(summary)
    io.write_text(out_dir / "table.md", report_tables.markdown_with_notes(header, rows, footnotes))
    io.write_text(out_dir / "table.tex", report_tables.latex_table(header, rows, footnotes))
    io.write_text(
        out_dir / "summary.md",
        report_tables.summary_markdown(summary, decisions, break_even, differences, protocol, diversity),
    )
    return summary
