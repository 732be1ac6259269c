"""Aggregate energy records and evaluations into one tidy table, then write the whole report.

The table has one row per (model, variant, seed). Energy is attributed to pipeline stages by the
rule that made each record: data (dataset rules), train (a from-scratch training run),
compress (every rule that makes a model from another: pruning + fine-tuning, quantization,
distillation) and evaluate. Statistics, decisions, figures and paper tables are in the
report_* modules; write_report ties them together.
"""

import logging
from typing import NamedTuple

import pandas as pd
import yaml

import joulebench
from joulebench import store, variants
from joulebench.energy.boundary import boundary_id, pipeline_boundary
from joulebench.evaluate.protocol import median_and_spread
from joulebench.report import decisions as report_decisions
from joulebench.report import figures as report_figures
from joulebench.report import stats
from joulebench.report import summary as report_summary
from joulebench.report import tables as report_tables
from joulebench.report.columns import EnergyColumns, inference_busy_columns

log = logging.getLogger(__name__)

STAGES = ("data", "train", "compress", "evaluate")


def split_skipped(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """(entries with results, skipped runs): a run whose model record says `skipped` (a variant
    this host could not run, e.g. a GPU power limit without a GPU) is listed, not tabulated."""
    kept, skipped = [], []
    for entry in entries:
        reason = store.read_json(entry["energy"]).get("skipped")
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


def stage_joules(
    data_records: list[dict], chain_records: dict, evaluation: dict | None, variant_settings
) -> dict:
    """Joules per pipeline stage for one model: `energy_<stage>_j` columns. `chain_records`: the
    energy record of each variant of the model's lineage, by name.

    A pruned model cannot exist without the baseline it was pruned from, so its train stage is the
    baseline's training (the lineage's from-scratch model); its compress stage is the pruning and
    fine-tuning (every model made from another).
    """
    joules = {stage: 0.0 for stage in STAGES}
    for record in data_records:
        joules["data"] += record["joules"]
    for step, record in chain_records.items():
        stage = "train" if variants.from_scratch(variant_settings, step) else "compress"
        joules[stage] += record["joules"]
    joules["evaluate"] = evaluation["joules"] if evaluation else None
    return {f"energy_{stage}_j": value for stage, value in joules.items()}


class Produced(NamedTuple):
    """How one model was made: its lineage, their records, and its energy to produce."""

    chain: list[str]
    lineage_records: dict
    data_records: list[dict]
    stages: dict
    pipeline_joules: float
    labels: list[str]


def build_table(
    entries: list[dict],
    variant_settings: dict,
    data_energy: dict,
    carbon: dict,
    idle: dict | None = None,
) -> pd.DataFrame:
    """One row per (model, variant, seed): metrics, energy and where each energy figure came from.

    `carbon` is config energy.carbon; `idle` the optional idle-power record (config
    energy.idle_baseline_seconds).
    """
    own = {_key(e): store.read_json(e["energy"]) for e in entries}
    # Every energy record of the run by label, so contention is checked across all of them.
    labels = {_key(e): e["energy"] for e in entries}
    run_records = {"data": data_energy, **({"idle": idle} if idle else {})}
    # Entries may name their own data records (preparation, cleaning, a subset's sampling).
    data_paths = {path: store.read_json(path) for e in entries for path in e.get("data_energy", [])}
    if data_paths:
        run_records = {**data_paths, **({"idle": idle} if idle else {})}
    run_records |= {e["energy"]: own[_key(e)] for e in entries}
    run_records |= {
        e["eval_energy"]: store.read_json(e["eval_energy"]) for e in entries if "eval_energy" in e
    }
    run_records |= {
        e["compare_energy"]: store.read_json(e["compare_energy"]) for e in entries if "compare_energy" in e
    }
    rounds = read_rounds(entries)
    energy_columns = EnergyColumns(run_records, carbon, idle)
    # Each model's lineage (its records' labels) and energy to produce, so that a row can be set
    # beside the baseline its verdicts compare it with.
    produced = {}
    for entry in entries:
        model, variant, seed = _key(entry)
        chain = variants.lineage(variant_settings, variant)
        data_labels = entry.get("data_energy", ["data"])
        lineage_records = {step: own[(model, step, seed)] for step in chain}
        data_records = [run_records[label] for label in data_labels]
        stages = stage_joules(
            data_records, lineage_records, run_records.get(entry.get("eval_energy")), variant_settings
        )
        pipeline = stages["energy_data_j"] + stages["energy_train_j"] + stages["energy_compress_j"]
        chain_labels = [labels[(model, step, seed)] for step in chain] + data_labels
        produced[_key(entry)] = Produced(chain, lineage_records, data_records, stages, pipeline, chain_labels)
    rows = []
    for entry in entries:
        model, variant, seed = entry["model"], entry["variant"], entry["seed"]
        metrics = store.read_json(entry["metrics"])
        record = own[(model, variant, seed)]
        chain, lineage_records, data_records, stages, pipeline, chain_labels = produced[_key(entry)]
        chain_records = [*lineage_records.values(), *data_records]
        evaluation = run_records.get(entry.get("eval_energy"))
        baseline = produced.get((model, variants.BASELINE, seed)) if variant != variants.BASELINE else None
        device, device_name = training_device(lineage_records[chain[-1]])  # the from-scratch root
        rows.append(
            {
                "dataset": entry["dataset"],
                "model": entry["model"],
                "variant": variant,
                "technique": variants.technique(variant_settings, variant),
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
                # What the joules cover (joulebench.energy.boundary): figures compare like for like only
                # within one boundary.
                "pipeline_energy_boundary": pipeline_boundary(chain_records),
                "inference_energy_boundary": boundary_id(evaluation) if evaluation else None,
                **energy_columns.row(
                    labels[(model, variant, seed)],
                    chain_labels,
                    pipeline,
                    entry.get("eval_energy"),
                    baseline=(baseline.labels, baseline.pipeline_joules) if baseline else None,
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
    (subset.json, which names its variant and seed); joulebench.data.diversity made the numbers."""
    rows = []
    for path in paths:
        report = store.read_json(path)
        variant, seed = report.get("variant"), report.get("seed")  # neither in the cleaning report
        stages = report.get("diversity", {})
        for data in sorted(stages, key=DATA_STAGES.index):
            rows.append({"data": data, "variant": variant, "seed": seed, **stages[data]})
    return pd.DataFrame(rows, columns=DIVERSITY_COLUMNS)


def interleaved_inference(rounds: pd.DataFrame, entry: dict, metrics: dict) -> dict:
    """The row's inference energy from the interleaved comparison: the median over its rounds and
    their interquartile range; the evaluation's own single window is kept beside it."""
    if rounds.empty:
        return {}
    job = rounds[(rounds["model"] == entry["model"]) & (rounds["seed"] == entry["seed"])]
    mine = job[job["variant"] == entry["variant"]]
    if mine.empty:
        return {}
    # The verdict pairs each of its rounds with the baseline's of the same round in this job.
    base = job[job["variant"] == variants.BASELINE] if entry["variant"] != variants.BASELINE else None
    median, spread = median_and_spread(list(mine["joules_per_1k"]))
    return {
        "eval_inference_joules_per_1k": metrics["inference_joules_per_1k"],
        "inference_joules_per_1k": median,
        "inference_joules_per_1k_iqr": spread,
        "inference_rounds": len(mine),
        "inference_energy_source": "+".join(sorted(set("+".join(mine["source"]).split("+")))),
        **inference_busy_columns(mine.to_dict("records"), None if base is None else base.to_dict("records")),
        "inference_busy_gpu": bool(mine.get("busy_gpu", pd.Series([False])).any()),
    }


def _key(entry: dict) -> tuple:
    return entry["model"], entry["variant"], entry["seed"]


def read_histories(entries: list[dict], table: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation accuracy of every trained model, on an energy axis from raw data.

    Each entry's `history` is written by the job that made its model; post-training rules
    (quantization without fine-tuning) write one without epochs. Each curve is shifted by the
    energy spent before its rule started (data + its lineage), so a fine-tuned model's curve starts
    where its parent's ended.
    """
    rows = table.set_index(["model", "variant", "seed"])
    curves = []
    for entry in entries:
        history = pd.read_csv(entry["history"])
        if history.empty:
            continue
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
    outputs: dict,
    rounds: pd.DataFrame | None = None,
    protocol: dict | None = None,
    skipped: list[dict] | None = None,
    diversity: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every report file, at the aggregate_report rule's declared `outputs` (each figure at the
    output named after it: its PNG and PDF); `settings` is config `report` (targets, budgets,
    constraints, the time-energy cost).

    `rounds`: the interleaved comparisons' windows (read_rounds), on which the inference
    differences rest; `protocol`: the measurement protocol, printed in summary.md; `skipped`: the
    runs this host could not make (split_skipped); `diversity`: the data stages' diversity
    (read_diversity), in diversity.csv and summary.md.
    """
    diversity = diversity if diversity is not None else pd.DataFrame(columns=DIVERSITY_COLUMNS)
    summary = stats.summarize(table)
    decisions = report_decisions.decide(summary, settings)
    decisions |= report_decisions.hardware_decisions(summary, settings)
    decisions["skipped"] = skipped or []
    differences = stats.paired_differences(table, rounds)
    break_even = report_decisions.break_even_table(summary, differences)
    decisions["break_even"] = report_decisions.break_even_records(break_even)
    store.write_csv(outputs["table"], table)
    store.write_atomic(outputs["parquet"], lambda tmp: table.to_parquet(tmp, index=False))
    store.write_csv(outputs["summary_table"], summary)
    store.write_csv(outputs["break_even"], break_even)
    store.write_csv(outputs["differences"], differences)
    store.write_csv(outputs["curves"], histories)
    store.write_csv(outputs["diversity_table"], diversity)
    store.write_json(outputs["decisions"], decisions)
    report_figures.write_figures(summary, histories, outputs)
    header, rows, footnotes = report_tables.paper_table(summary)
    store.write_text(outputs["markdown"], report_tables.markdown_with_notes(header, rows, footnotes))
    store.write_text(outputs["latex"], report_tables.latex_table(header, rows, footnotes))
    store.write_text(
        outputs["summary"],
        report_summary.summary_markdown(summary, decisions, break_even, differences, protocol, diversity),
    )
    return summary


def config_text(config: dict) -> str:
    """The resolved config as YAML in the config file's key order, non-ASCII text (a dataset path
    with umlauts) as written rather than escaped, under a comment naming the joulebench version
    that made the report (a comment, so the file stays a valid --configfile)."""
    header = f"# The resolved config of this report, made by joulebench {joulebench.__version__}.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def aggregate_report(
    inputs: dict,
    outputs: dict,
    entries: list[dict],
    variant_settings: dict,
    carbon: dict,
    report_settings: dict,
    config: dict,
) -> None:
    """The aggregate_report rule: every entry's records into the report's declared `outputs`, and
    the resolved `config` (schema defaults filled in) saved beside them."""
    idle = store.read_json(inputs["idle"]) if "idle" in inputs else None
    entries, skipped = split_skipped(entries)
    table = build_table(entries, variant_settings, store.read_json(inputs["data_energy"]), carbon, idle)
    histories = read_histories(entries, table)
    compare_records = [store.read_json(e["compare_energy"]) for e in entries if "compare_energy" in e]
    protocol = compare_records[0]["protocol"] if compare_records else None
    summary = write_report(
        table,
        histories,
        report_settings,
        outputs,
        read_rounds(entries),
        protocol,
        skipped,
        read_diversity(inputs["diversity"]),
    )
    store.write_text(outputs["config"], config_text(config))
    log.info("summary:\n%s", summary.to_string())
