"""The GPU checks in checks/ (gpu_energy_check.py, gpu_precision.py) without a GPU: over the SIMULATED
host of tests/support/simulated_host, whose NVML a process of its own sees too, and over a mocked NVML.

The simulated GPU's power model follows the CPU share of the process that reads it, so a trainer
and a sampler process agree only on its idle draw: the counter check runs with SIMULATED_GPU_BUSY_W
0, where both see IDLE_W. SITECUSTOMIZE (put before the simulated host on PYTHONPATH) sets
nvmlDeviceGetPowerUsage to a constant where GPU_CHECK_POWER_USAGE_W asks for one, to tell that
reading apart from the instant-power field.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
import zeus.device.cpu
import zeus.device.gpu
from zeus.device.gpu import nvidia

from conftest import ROOT, tiny_config
from joulebench.config import check_config, resolved_config
from joulebench.data import sources
from joulebench.devices import CPU, Placement
from joulebench.energy import meter as energy
from simulated_host.nvml import SimulatedNVML

SIMULATED_HOST = ROOT / "tests" / "support" / "simulated_host"
IDLE_W = 60.0
# A rule whose work runs on GPU 0: torch's tensors stay on the CPU, its stand-in.
ON_GPU0 = Placement(torch.device("cpu"), 0)

SITECUSTOMIZE = """
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("simulated_host_sitecustomize", {simulated!r})
_simulated = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_simulated)
_simulate_nvidia = _simulated.PATCHES["zeus.device.gpu.nvidia"]


def _with_power_usage(module):
    _simulate_nvidia(module)
    nvml = module.pynvml
    constant = os.environ.get("GPU_CHECK_POWER_USAGE_W")
    if constant:
        nvml.nvmlDeviceGetPowerUsage.side_effect = lambda handle: int(float(constant) * 1000)


_simulated.PATCHES["zeus.device.gpu.nvidia"] = _with_power_usage
"""


@pytest.fixture
def simulated_gpu(tmp_path) -> dict:
    """Environment variables under which a Python process sees one simulated H200 at IDLE_W."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(simulated=str(SIMULATED_HOST / "sitecustomize.py"))
    )
    host = tmp_path / "host"  # no powercap tree: the CPU is estimated
    host.mkdir()
    path = [str(hooks), str(SIMULATED_HOST), str(ROOT / "checks"), os.environ.get("PYTHONPATH", "")]
    return {
        "PYTHONPATH": os.pathsep.join(path),
        "JOULEBENCH_SIMULATED_HOST": str(host),
        "SIMULATED_GPU_IDLE_W": str(IDLE_W),
        "SIMULATED_GPU_BUSY_W": "0",
    }


def check_module(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "checks"))
    return importlib.import_module(name)


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "checks/gpu_energy_check.py", *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.mark.quiet  # timings: on a loaded host the sampler process starts and samples late
def test_the_sampler_reads_nvml_power_usage_every_10_ms_in_a_process_of_its_own(simulated_gpu, monkeypatch):
    # nvmlDeviceGetPowerUsage says 123 W, the instant-power field IDLE_W: the sampler reads the former,
    # through the simulated NVML it gets from zeus.device.gpu.nvidia in a spawned process.
    for name, value in {**simulated_gpu, "GPU_CHECK_POWER_USAGE_W": "123"}.items():
        monkeypatch.setenv(name, value)
    check = check_module("gpu_energy_check", monkeypatch)
    with check.PowerSampler(nvml_index=0, period=0.01) as sampler:
        time.sleep(1.0)
    assert sampler.pid != os.getpid()
    assert len(sampler.samples) >= 40
    assert {watts for _, watts in sampler.samples} == {123.0}
    assert 0.009 <= sampler.median_period() <= 0.02


@pytest.mark.slow  # a 6 s training window under the simulated NVML, about 15 s in all
def test_the_counter_check_passes_against_a_simulated_gpu_counter(simulated_gpu):
    # The counter check on a (simulated) GPU host: Zeus's counter, read in the trainer's process,
    # against the power samples of another process, over the same window of at least 5 s.
    result = run_check(
        "--no-workflow", "--seconds", "5", "--arch", "small_cnn", "--image-size", "8", env=simulated_gpu
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GPU: NVIDIA H200 (SIMULATED)" in result.stdout
    processes = re.search(r"in process (\d+), not this one (\d+)", result.stdout)
    assert processes and processes[1] != processes[2]
    ratio = re.search(r"ratio Zeus / samples = ([0-9.]+): PASS", result.stdout)
    assert ratio, result.stdout
    assert 0.95 <= float(ratio[1]) <= 1.05
    window = float(re.search(r"window: ([0-9.]+) s", result.stdout)[1])
    zeus_joules = float(re.search(r"energy counter \(nvml-counter\): ([0-9.]+) J", result.stdout)[1])
    assert window >= 5.0 and zeus_joules == pytest.approx(IDLE_W * window, rel=0.05)


def test_the_check_runs_as_the_readme_prints_it():
    # `python checks/gpu_energy_check.py` here (torch computes on no GPU): both parts say SKIP, within
    # seconds, and nothing is measured.
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[:2] for line in lines] == [
        ["SKIP", " workflow check"],
        ["SKIP", " counter check"],
    ]


def test_gpu_precision_trains_and_meters_on_the_accelerator(monkeypatch, tmp_path, capsys):
    # Where torch computes on GPU 0 (simulated: NVML mocked, tensors on the CPU), the model, its
    # batches and the meter share that placement, and every figure is the GPU's NVML counter.
    monkeypatch.setattr(nvidia, "pynvml", SimulatedNVML(IDLE_W, 0.0).module)
    monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
    monkeypatch.setattr(zeus.device.gpu, "_gpus", None)
    monkeypatch.setattr(zeus.device.cpu, "_cpus", None)
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    precision = check_module("gpu_precision", monkeypatch)
    monkeypatch.setattr(precision, "accelerator", lambda: ON_GPU0)
    trained_on = []
    real_train = precision.train

    def recording_train(model, arrays, settings, meter):
        history = real_train(model, arrays, settings, meter)
        trained_on.append((meter.placement, next(model.parameters()).device))
        return history

    monkeypatch.setattr(precision, "train", recording_train)
    out = tmp_path / "precision.json"
    precision.main(
        ["--arch", "small_cnn", "--image-size", "8", "--seeds", "0", "--max-epochs", "1", "--out", str(out)]
    )
    assert trained_on == [(ON_GPU0, ON_GPU0.torch_device)] * 4  # warm-up and the three precisions
    runs = json.loads(out.read_text())["runs"]
    assert [run["requested"] for run in runs] == ["fp32", "fp16", "bf16"]
    for run in runs:
        assert run["placement"] == {"device": "cuda", "torch_device": "cpu", "gpu_cuda_index": 0}
        assert run["gpu"] == "NVIDIA H200 (SIMULATED)"
        assert "nvml-counter" in run["source"].split("+")
    assert "NVIDIA H200 (SIMULATED)" in capsys.readouterr().out


def test_gpu_precision_says_skip_where_torch_computes_on_no_gpu(monkeypatch, tmp_path, capsys):
    precision = check_module("gpu_precision", monkeypatch)
    monkeypatch.setattr(precision, "accelerator", lambda: CPU)
    out = tmp_path / "precision.json"
    precision.main(["--out", str(out)])
    assert capsys.readouterr().out.startswith("SKIP: ") and not out.exists()


def gpu_record(**changes) -> dict:
    record = {
        "rule": "train_model",
        "placement": ON_GPU0.describe(),
        "gpu": {"used": True, "metered": True, "reason": None, "name": "NVIDIA H200"},
        "devices": {"gpu0": {"joules": 10.0, "source": "nvml-counter"}},
        "source": "estimate:green-algorithms+nvml-counter",
        "device": {"pinned": None},
    }
    return record | changes


def test_the_workflow_check_fails_records_that_meter_the_wrong_device(monkeypatch):
    check = check_module("gpu_energy_check", monkeypatch)
    path = Path("models/digits/resnet18/baseline/seed0/energy.json")
    assert check.record_failures(path, gpu_record(), gpu_host=True) == []
    unmetered = gpu_record(
        gpu={"used": True, "metered": False, "reason": "no NVML", "name": None},
        devices={},
        source="estimate:green-algorithms",
    )
    assert check.record_failures(path, unmetered, gpu_host=True) == [
        f"train_model {path.parent} computes on a GPU but its source is estimate:green-algorithms (no NVML)"
    ]
    on_cpu = {
        "placement": CPU.describe(),
        "gpu": {"used": False, "metered": False, "reason": None, "name": None},
    }
    cpu_naming_gpu = gpu_record(rule="quantize_model", **on_cpu)
    assert check.record_failures(path, cpu_naming_gpu, gpu_host=True) == [
        f"quantize_model {path.parent} computes on the CPU but its record names a GPU "
        "(estimate:green-algorithms+nvml-counter)"
    ]
    trained_on_cpu = gpu_record(devices={}, source="estimate:green-algorithms", **on_cpu)
    assert check.record_failures(path, trained_on_cpu, gpu_host=True) == [
        f"train_model {path.parent} trained on the CPU of a GPU host"
    ]
    assert check.record_failures(path, trained_on_cpu, gpu_host=False) == []
    pinned = trained_on_cpu | {"device": {"pinned": "cpu"}}
    assert check.record_failures(path, pinned, gpu_host=True) == []


def test_the_gpu_config_is_valid_and_its_digits_folder_is_written_for_the_run(monkeypatch, tmp_path):
    check = check_module("gpu_energy_check", monkeypatch)
    config = yaml.safe_load(check.prepare_run(check.GPU_CHECK_CONFIG, tmp_path).read_text())
    check_config(resolved_config(config))
    assert config["models"] == ["resnet18"]
    precisions = {v.get("precision") for v in config["variants"].values() if v["technique"] == "precision"}
    techniques = {variant["technique"] for variant in config["variants"].values()}
    assert precisions == {"fp16", "bf16"} and {"prune", "quantize"} <= techniques
    dataset = config["dataset"]
    assert dataset["root"] == str(tmp_path / check.DIGITS_FOLDER)
    source = sources.load_imagefolder_source(dataset["root"], image_size=dataset["image_size"])
    assert source.images.shape == (1797, 1, 32, 32) and source.classes == [str(c) for c in range(10)]


@pytest.mark.slow
def test_the_whole_check_on_a_simulated_gpu_host(simulated_gpu, tmp_path):
    # Both parts on the simulated host: the workflow (real snakemake, default profile, warm start)
    # on a small config with the check's variant kinds, then the counter check.
    config = tiny_config()
    # One reduced precision (bf16 is the same kind, and 13x slower on a CPU without bf16 kernels).
    keep = ("fp16", "prune80", "int8_dynamic")
    config["variants"] = {name: variant for name, variant in config["variants"].items() if name in keep}
    config["energy"]["idle_baseline_seconds"] = 1
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    arguments = ["--seconds", "5", "--arch", "small_cnn", "--image-size", "8"]
    result = run_check(*arguments, "--config", str(tmp_path / "small.yaml"), env=simulated_gpu)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "workflow check: PASS" in result.stdout
    assert re.search(r"ratio Zeus / samples = [0-9.]+: PASS", result.stdout)
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in ("train_model", "prune_model", "quantize_model", "evaluate_model"):
            rows[fields[0], fields[1]] = line
    for variant in ("baseline", "fp16"):
        assert "GPU 0 (NVIDIA H200 (SIMULATED))" in rows["train_model", variant]
        assert "nvml-counter" in rows["train_model", variant]
    assert "nvml-counter" in rows["prune_model", "prune80"]
    for rule in ("quantize_model", "evaluate_model"):
        assert " cpu " in rows[rule, "int8_dynamic"] and "nvml" not in rows[rule, "int8_dynamic"]
