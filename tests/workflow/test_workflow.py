"""The real workflow, run by Snakemake on a tiny config in a temporary directory."""

import copy
import json
import re

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from conftest import ROOT, run_snakemake, tiny_config
from joulebench.config import idle_baseline_seconds
from joulebench.energy import cpu_power

pytestmark = pytest.mark.slow

VARIANTS = sorted(["baseline", *yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["variants"]])


def test_every_output_exists_with_sane_values(tiny_run):
    workdir, config, _ = tiny_run
    report = workdir / "results" / "report"
    for name in ("results.csv", "summary.csv", "summary.md", "accuracy_vs_training_energy.pdf"):
        assert (report / name).stat().st_size > 0, name
    table = pd.read_csv(report / "results.csv")
    assert sorted(table["variant"]) == VARIANTS
    assert set(table["seed"]) == {0}
    # One epoch on a 50% EL2N subset (the hardest, class-skewed half) reaches only ~0.4: that is the
    # finding, not a failure; every other model passes 0.5 after one epoch.
    subsets = table["technique"] == "subset"
    assert table.loc[~subsets, "test_accuracy"].between(0.5, 1.0).all()
    assert table.loc[subsets, "test_accuracy"].between(0.1, 1.0).all()
    assert (table["own_energy_j"] > 0).all() and (table["pipeline_energy_j"] > 0).all()
    assert set(table["own_energy_source"]) == {"estimate:green-algorithms"}
    assert not table["pipeline_energy_measured"].any()
    # Attribution and provenance columns (joulebench.report.columns): estimates have no device,
    # so nothing is contended and there is no dynamic energy; carbon comes from the joules.
    assert not table["own_contended"].any() and not table["pipeline_contended"].any()
    assert table["own_energy_hardware"].str.startswith("none measured").all()
    assert table["own_dynamic_energy_j"].isna().all()
    assert (table["pipeline_gco2e"] > 0).all() and (table["zeus_version"] == "0.16.0").all()
    rows = table.set_index("variant")
    # Claims of each variant, visible in the evaluation.
    assert rows.loc["prune80", "nonzero_params"] < 0.3 * rows.loc["baseline", "nonzero_params"]
    assert rows.loc["distill_w8", "params"] < rows.loc["baseline", "params"] / 3
    assert rows.loc["int8_dynamic", "size_bytes"] < 0.5 * rows.loc["baseline", "size_bytes"]
    for variant in ("channels50", "channels50_qat"):  # channels physically removed
        assert rows.loc[variant, "params"] < 0.45 * rows.loc["baseline", "params"]
        assert rows.loc[variant, "macs"] < 0.45 * rows.loc["baseline", "macs"]
    # int8 weights, but the torch.export archive also stores the graph: on this small model the
    # QAT artifact measured 0.68x its float parent, not the 0.25x of the weights alone.
    assert rows.loc["channels50_qat", "size_bytes"] < 0.75 * rows.loc["channels50", "size_bytes"]
    assert rows.loc["bf16", "precision"] == "bf16"
    assert rows.loc["fp16", "precision"] in ("fp16", "bf16")
    # Lineage energy: a compressed model carries the baseline that it was made from.
    for variant in ("prune80", "int8_dynamic", "distill_w8"):
        assert rows.loc[variant, "pipeline_energy_j"] > rows.loc["baseline", "pipeline_energy_j"]
    assert (rows["macs"] > 0).all() and (rows["flops"] == 2 * rows["macs"]).all()
    assert (rows["latency_p95_ms"] >= rows["latency_p50_ms"]).all()
    summary = (report / "summary.md").read_text()
    assert "Pareto-optimal" in summary and "estimated" in summary
    assert "does **not** save" in summary  # on CPU, compression never saves the energy to produce


def test_energy_records_and_histories(tiny_run):
    workdir, config, _ = tiny_run
    records = list((workdir / "results").rglob("energy.json"))
    # prepare + clean, one sampling per subset variant and seed, one producing rule and one
    # evaluation per model (baseline and each variant), and one inference comparison per seed
    subsets = [v for v in config["variants"].values() if v["technique"] == "subset"]
    comparisons = len(config["seeds"]) * len(config["models"])
    assert len(records) == 2 + len(subsets) * len(config["seeds"]) + 2 * len(VARIANTS) + comparisons
    for path in records:
        record = json.loads(path.read_text())
        assert record["schema"] == "joulebench.energy/1"
        assert record["measured"] is False and record["joules"] > 0
        assert record["source"] == "estimate:green-algorithms"
        # No power per core configured: the host's CPU model in CodeCarbon's TDP table decides it.
        assert (record["estimate"]["power_per_core_w"], record["estimate"]["power_per_core_source"]) == (
            cpu_power.watts_per_core(record["cpu_model"])
        )
        assert record["zeus_version"] == "0.16.0"
        assert record["windows"], path
    history = pd.read_csv(workdir / "results/models/digits/small_cnn/baseline/seed0/history.csv")
    assert list(history["epoch"]) == [1]
    log = (workdir / "logs/train_model/digits/small_cnn/baseline/seed0.log").read_text()
    assert "epoch 1/1 loss" in log


# Windows that may still import on first use: torch.export's tracing of the QAT graph (sympy and
# torch submodules), torchao's int8 dispatch (its own submodules), the comparison's float and
# int8 models side by side (torch submodules), scikit-learn's digits reader (its own submodules).
IMPORTING_RULES = {"quantize_model", "compare_inference", "prepare_dataset"}


def test_training_evaluation_and_data_windows_import_nothing(tiny_run):
    """Importing is not the measured work, and its time varies with the disk cache between runs:
    each stage imports what its window will use before the window opens
    (joulebench.run.prepare.import_before_window).
    Dynamo (torch.optim imports it), albumentations, scipy, torch_pruning and the MAC counter once
    loaded inside these windows, as much as half of a training window."""
    workdir, _, _ = tiny_run
    for path in (workdir / "results").rglob("energy.json"):
        record = json.loads(path.read_text())
        if record["rule"] in IMPORTING_RULES:
            continue
        for window in [record, *record["windows"]]:
            assert window["imported_in_window"] == [], (path, window.get("window"))


def test_second_run_has_nothing_to_do(tiny_run):
    workdir, config, _ = tiny_run
    result = run_snakemake(workdir, config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_has_no_warnings(tmp_path):
    result = run_snakemake(tmp_path, tiny_config(), "-n")
    # The temp dir's name holds this test's name, which says "warnings": leave paths out.
    output = (result.stdout + result.stderr).replace(str(tmp_path), "<workdir>")
    assert "warning" not in output.lower(), output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(colour="blue"),
            "Additional properties are not allowed ('colour' was unexpected)",
        ),
        (lambda c: c["training"].update(epochs="five"), "'five' is not of type 'integer'"),
        (lambda c: c["training"].update(epochs=0), "0 is less than the minimum of 1"),
        (lambda c: c.update(seeds=[]), "[] should be non-empty"),
        (
            lambda c: c["variants"]["prune80"].update(sparsity=1.5),
            "1.5 is greater than or equal to the maximum",
        ),
        (
            lambda c: c["variants"]["prune80"].update(**{"from": "ghost"}),
            "variants.prune80.from: unknown variant",
        ),
        (lambda c: c.update(models=["vgg99"]), "unknown model 'vgg99'"),
        (
            lambda c: c["variants"]["bf16"].update(technique="magic"),
            "'magic' is not one of",
        ),
        (
            lambda c: c["variants"]["bf16"].update(**{"from": "prune80"}),
            "Additional properties are not allowed ('from' was unexpected)",
        ),
        (
            lambda c: c["dataset"].update(val_fraction=0.45, test_fraction=0.45),
            "dataset.val_fraction + dataset.test_fraction must leave at least 10% for training",
        ),
        (
            lambda c: c["energy"].update(carbon={"region": "ATLANTIS"}),
            "energy.carbon.region: unknown region 'ATLANTIS'",
        ),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, change, message):
    config = tiny_config()
    change(config)
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def expected_jobs(config: dict) -> int:
    """The jobs of a full run, counted from the experiment design: per seed and model, each
    variant (with the baseline) made and evaluated, and one interleaved comparison; a subset
    variant's sampling per seed; the data stage; the report and `all`. Defaults come from the
    schema, as the workflow sees them."""
    config = copy.deepcopy(config)
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    seeds, models = len(config["seeds"]), len(config["models"])
    variants = 1 + len(config["variants"])
    subsets = sum(v["technique"] == "subset" for v in config["variants"].values())
    augmentation = config["augmentation"]
    data = 2  # prepare_dataset, clean_dataset
    data += bool(augmentation["transforms"])  # plot_augmentation
    data += bool(augmentation["transforms"]) and augmentation["materialize_copies"] > 0  # augment_dataset
    idle = idle_baseline_seconds(config["energy"]["idle_baseline_seconds"]) > 0  # measure_idle_power
    return seeds * models * (2 * variants + 1) + seeds * subsets + data + idle + 2


def test_shipped_config_is_valid_and_builds_the_full_dag(tmp_path):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    result = run_snakemake(tmp_path, config, "-n", "--quiet", "rules")
    assert "evaluate_model" in result.stdout
    total = re.findall(r"^total\s+(\d+)$", result.stdout, re.MULTILINE)
    assert total and int(total[-1]) == expected_jobs(config), result.stdout
    # The README's count of the default run: 65 jobs on a host without energy counters (where
    # there is one, `auto` adds measure_idle_power).
    idle = idle_baseline_seconds(config["energy"]["idle_baseline_seconds"]) > 0
    assert expected_jobs(config) == 65 + idle
