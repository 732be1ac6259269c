"""The real workflow on a SIMULATED GPU + RAPL host (tests/support/simulated_host): every rule meters the
devices it computes on, labelled with its counter, and the joules follow the simulated power model.

The simulated GPU draws IDLE_W + BUSY_W x (the share of the host's CPUs its process keeps busy), its
counter ticking every 100 ms; the simulated CPU package draws PACKAGE_IDLE_W + PACKAGE_BUSY_W x the
host's CPU utilisation, DRAM a flat DRAM_W. Each record holds what the model needs to predict its
joules: wall time, the process's own CPU seconds and the other processes' share of the host.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, snakemake_command, tiny_config
from simulated_run import (
    CPU_ONLY_RULES,
    DRAM_W,
    GPU_BUSY_W,
    GPU_IDLE_W,
    NVML_PERIOD_S,
    PACKAGE_BUSY_W,
    PACKAGE_IDLE_W,
    PINNABLE_RULES,
    SIMULATED_HOST,
    expected_gpu_joules,
    expected_package_joules,
    simulated_host,
    writer_gap_s,
)


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    config = tiny_config()
    config["variants"] = {k: v for k, v in config["variants"].items() if k in ("bf16", "int8_dynamic")}
    # The baseline recipe pinned to the CPU beside the (simulated) GPU baseline: the device axis.
    config["variants"]["oncpu"] = {"technique": "device", "device": "cpu"}
    config["evaluation"]["inference_min_seconds"] = 1.0
    workdir = tmp_path_factory.mktemp("simulated_run")
    host = tmp_path_factory.mktemp("simulated_host")
    with simulated_host(host) as variables:
        result = subprocess.run(
            snakemake_command(workdir, config),
            capture_output=True,
            text=True,
            cwd=workdir,
            env={**os.environ, **variables},
        )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    (workdir / "console.txt").write_text(result.stderr)
    records = {path: json.loads(path.read_text()) for path in (workdir / "results").rglob("energy.json")}
    return workdir, records, writer_gap_s(host)


@pytest.mark.slow
def test_no_job_on_a_gpu_host_is_forked_from_a_process_that_loaded_torch(simulated_run):
    # On an NVIDIA host CUDA cannot be used in a process forked from one that started the driver:
    # the simulated GPU fails the way CUDA does there (simulated_host/sitecustomize.py), and the run
    # above completed. The console says how its jobs started, and why.
    workdir, _, _ = simulated_run
    console = (workdir / "console.txt").read_text()
    assert "each job starts in its own interpreter, not from a warm worker: NVML answers" in console
    assert not (workdir / "logs" / "warm_worker.log").exists()
    for log in (workdir / "logs").rglob("*.log"):
        assert "started from the run's warm worker" not in log.read_text(), log


@pytest.mark.slow
def test_every_rule_meters_the_devices_it_computes_on(simulated_run):
    _, records, _ = simulated_run
    rules = {record["rule"] for record in records.values()}
    assert {"train_model", "evaluate_model", "quantize_model", "prepare_dataset"} <= rules
    for path, record in records.items():
        on_cpu = "int8" in str(path) or "oncpu" in str(path)
        cpu_only = record["rule"] in CPU_ONLY_RULES or (record["rule"] in PINNABLE_RULES and on_cpu)
        if cpu_only:
            assert record["source"] == "rapl+rapl-dram", path
            assert "gpu" not in json.dumps(record["hardware"]) and record["gpu"]["used"] is False, path
        else:  # training and float inference: the GPU and the CPU package it feeds
            assert record["source"] == "nvml-counter+rapl+rapl-dram", path
            assert record["devices"]["gpu0"]["name"] == "NVIDIA H200 (SIMULATED)", path
        assert record["measured"] is True, path


@pytest.mark.slow
def test_joules_follow_the_simulated_power_model(simulated_run):
    _, records, gap = simulated_run
    edge = 2 * gap * (PACKAGE_IDLE_W + PACKAGE_BUSY_W)
    gpu_pairs, package_pairs = [], []
    for path, record in records.items():
        package = record["devices"]["cpu0"]["joules"]
        expected = expected_package_joules(record)
        assert package == pytest.approx(expected, rel=0.05, abs=edge), path
        assert record["devices"]["dram0"]["joules"] == pytest.approx(
            DRAM_W * record["wall_time_s"], rel=0.05, abs=2 * gap * DRAM_W
        )
        package_pairs.append((package, expected))
        if "gpu0" in record["devices"]:
            gpu, expected = record["devices"]["gpu0"]["joules"], expected_gpu_joules(record)
            edge = 2 * NVML_PERIOD_S * (GPU_IDLE_W + GPU_BUSY_W)
            assert gpu == pytest.approx(expected, rel=0.05, abs=edge), path
            gpu_pairs.append((gpu, expected))
    # Over the whole run the counters' update periods average out: within 5%, no allowance.
    for pairs in (gpu_pairs, package_pairs):
        measured, expected = (sum(values) for values in zip(*pairs, strict=True))
        assert measured == pytest.approx(expected, rel=0.05)


@pytest.mark.slow
def test_the_report_draws_measured_markers(simulated_run):
    workdir, _, _ = simulated_run
    summary = pd.read_csv(workdir / "results" / "report" / "summary.csv")
    assert summary["pipeline_energy_measured"].all() and summary["inference_energy_measured"].all()
    assert "measured** by hardware counters" in (workdir / "results" / "report" / "summary.md").read_text()
    metrics = pd.read_csv(workdir / "results" / "report" / "results.csv")
    devices = dict(zip(metrics["variant"], metrics["inference_precision"], strict=True))
    assert devices == {"baseline": "fp32", "bf16": "bf16", "int8_dynamic": "fp32", "oncpu": "fp32"}


@pytest.mark.slow
def test_a_cpu_pinned_variant_meters_only_the_cpu_and_the_report_says_so(simulated_run):
    workdir, records, _ = simulated_run
    models = workdir / "results" / "models" / "digits" / "small_cnn"
    baseline = records[models / "baseline" / "seed0" / "energy.json"]
    pinned = records[models / "oncpu" / "seed0" / "energy.json"]
    # The baseline trains on the (simulated) GPU, which NVML meters beside the CPU package.
    assert baseline["placement"]["device"] == "cuda" and baseline["gpu"]["metered"] is True
    assert baseline["source"] == "nvml-counter+rapl+rapl-dram"
    assert baseline["device"] == {
        "pinned": None,
        "computed_on": "cpu",  # the simulated GPU's stand-in: torch computes on the CPU
        "metered": ["cpu0:rapl", "dram0:rapl-dram", "gpu0:nvml-counter"],
        "gpu_charged": True,
    }
    # The pinned variant on the same GPU host: CPU only, RAPL only, no GPU charged to it.
    assert pinned["placement"] == {"device": "cpu", "torch_device": "cpu", "gpu_cuda_index": None}
    assert pinned["source"] == "rapl+rapl-dram" and "gpu0" not in pinned["devices"]
    assert pinned["device"] == {
        "pinned": "cpu",
        "computed_on": "cpu",
        "metered": ["cpu0:rapl", "dram0:rapl-dram"],
        "gpu_charged": False,
    }
    evaluation = workdir / "results" / "eval" / "digits" / "small_cnn" / "oncpu" / "seed0"
    assert json.loads((evaluation / "metrics.json").read_text())["inference_device"] == "cpu"
    table = pd.read_csv(workdir / "results" / "report" / "results.csv").set_index("variant")
    assert table.loc["baseline", "training_device"] == "cuda"
    assert table.loc["baseline", "training_device_name"] == "NVIDIA H200 (SIMULATED)"
    assert table.loc["baseline", "inference_device"] == "cuda"
    assert table.loc["oncpu", "training_device"] == "cpu"
    assert table.loc["oncpu", "inference_device"] == "cpu"
    # An int8 model of the GPU baseline was trained on the GPU; it infers on the CPU.
    assert table.loc["int8_dynamic", "training_device"] == "cuda"
    assert table.loc["int8_dynamic", "inference_device"] == "cpu"
    summary = (workdir / "results" / "report" / "summary.md").read_text()
    assert "(across devices: trained on cuda vs cpu)" in summary
    assert "- **Across devices**: the decisions compare variants trained on different devices" in summary


@pytest.mark.slow
def test_zeus_helper_processes_do_not_rerun_the_rule_scripts(simulated_run):
    # Zeus's RAPL wrap-around tracker is a spawned process that re-imports the rule script:
    # without the __main__ guard it reruns the rule, truncating its log.
    workdir, _, _ = simulated_run
    logs = list((workdir / "logs").rglob("*.log"))
    assert logs
    for log in logs:
        text = log.read_bytes()
        assert b"\0" not in text and b"bootstrapping phase" not in text, log
    evaluation = next(log for log in logs if "evaluate_model" in str(log) and "baseline" in str(log))
    assert b"metrics:" in evaluation.read_bytes()
    rules = "".join(path.read_text() for path in (ROOT / "workflow" / "rules").glob("*.smk"))
    scripts = set(re.findall(r'"\.\./scripts/(\w+\.py)"', rules))
    assert len(scripts) >= 10, scripts
    for name in scripts:
        script = ROOT / "workflow" / "scripts" / name
        assert 'if __name__ == "__main__":' in script.read_text(), script


def test_simulated_host_is_off_unless_asked():
    # The simulation is inert in a normal process: no patch hooks without its variable.
    assert not any(type(finder).__name__ == "PatchOnImport" for finder in sys.meta_path)
    assert Path(SIMULATED_HOST / "sitecustomize.py").exists()
