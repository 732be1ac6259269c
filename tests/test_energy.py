"""The energy module over a REAL ZeusMonitor: no hardware here, and NVML/RAPL mocked the way Zeus's tests do.

Zeus's own suite (ml-energy/zeus tests/test_monitor.py, tests/device/cpu/test_rapl.py) replaces
`zeus.device.gpu.nvidia.pynvml` with an autospec MagicMock that keeps NVML's real constants,
resets the module-level device caches, and replaces the processes that poll hardware. We do the
same and build a real ZeusMonitor (and a real RAPLCPUs over a fake powercap tree), so our
integration is tested against Zeus's real window arithmetic. Everything named MOCK stands in for
hardware this machine does not have.
"""

import json
import time
from types import SimpleNamespace
from unittest import mock

import pynvml
import pytest
import zeus.device.cpu
import zeus.device.cpu.rapl
import zeus.device.gpu
import zeus.monitor.energy
from zeus.device.gpu import nvidia

from joulebench import energy
from joulebench.energy import (
    ESTIMATE_MODEL,
    EnergyMeter,
    EstimateModel,
    dynamic_joules,
    measure_idle_power,
)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


@pytest.fixture(autouse=True)
def fresh_zeus_devices():
    """Zeus caches device objects in module globals; each test starts and ends without them."""

    def reset():
        zeus.device.gpu._gpus = None
        zeus.device.cpu._cpus = None
        zeus.device.cpu.rapl.rapl_is_available.cache_clear()

    reset()
    yield
    reset()


class MockNVML:
    """MOCK NVML: an autospec pynvml whose GPUs burn `idle_w` watts plus whatever `burn` adds.

    The energy counter (mJ since "driver load") advances with wall time at idle power, as a real
    counter does, so idle baselines and dynamic energy can be checked against known numbers.
    """

    def __init__(self, archs: list[int], idle_w: float = 0.0, instant_w: float = 200.0):
        self.module = mock.create_autospec(pynvml)
        for name in dir(pynvml):
            if name.startswith("NVML_") and isinstance(getattr(pynvml, name), int):
                setattr(self.module, name, getattr(pynvml, name))
        self.module.NVMLError = pynvml.NVMLError
        self.started = time.time()
        self.idle_w = idle_w
        self.burned_mj = {f"handle{i}": 0.0 for i in range(len(archs))}
        arch_of = {f"handle{i}": arch for i, arch in enumerate(archs)}
        nvml = self.module
        nvml.nvmlDeviceGetCount.return_value = len(archs)
        nvml.nvmlDeviceGetHandleByIndex.side_effect = lambda index: f"handle{index}"
        nvml.nvmlDeviceGetArchitecture.side_effect = arch_of.__getitem__
        nvml.nvmlDeviceGetC2cModeInfoV.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H200 (MOCK)"
        nvml.nvmlDeviceGetUUID.side_effect = lambda handle: f"GPU-MOCK-{handle}"
        nvml.nvmlSystemGetDriverVersion.return_value = "550.54.15"
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = self.counter_mj
        power = SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=instant_w * 1000))
        nvml.nvmlDeviceGetFieldValues.return_value = [power]

    def counter_mj(self, handle: str) -> int:
        # NVML returns whole millijoules.
        return int(1_000_000 + self.idle_w * (time.time() - self.started) * 1000 + self.burned_mj[handle])

    def burn(self, joules: float, gpu: int = 0) -> None:
        self.burned_mj[f"handle{gpu}"] += joules * 1000


class MockPowerMonitor:
    """MOCK of Zeus's PowerMonitor (a process polling NVML power) for pre-Volta GPUs: 250 W flat."""

    watts = 250.0

    def __init__(self, gpu_indices, update_period):
        self.gpu_indices = gpu_indices

    def get_energy(self, start: float, end: float) -> dict[int, float]:
        return {index: self.watts * (end - start) for index in self.gpu_indices}


@pytest.fixture
def gpus(monkeypatch):
    """Install MOCK NVIDIA GPUs of the given architectures; returns the MockNVML."""

    def install(archs, idle_w=0.0, instant_w=200.0):
        nvml = MockNVML(archs, idle_w, instant_w)
        monkeypatch.setattr(nvidia, "pynvml", nvml.module)
        monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
        monkeypatch.setattr(zeus.monitor.energy, "PowerMonitor", MockPowerMonitor)
        # No CUDA here: record the synchronizations Zeus makes at window edges instead.
        monkeypatch.setattr(zeus.monitor.energy, "sync_execution_fn", nvml.sync)
        return nvml

    MockNVML.sync = mock.MagicMock()
    return install


class MockRaplTracker:
    """MOCK of Zeus's RAPL wrap-around tracker (a polling process); our windows never wrap."""

    def __init__(self, path, max_energy_uj):
        pass

    def get_num_wraparounds(self) -> int:
        return 0


@pytest.fixture
def rapl(tmp_path, monkeypatch):
    """A fake powercap tree (package 0 with a DRAM sub-zone) read by Zeus's real RAPL classes."""
    root = tmp_path / "powercap" / "intel-rapl"
    package = root / "intel-rapl:0"
    dram = package / "intel-rapl:0:0"
    for zone, name in ((package, "package-0"), (dram, "dram")):
        zone.mkdir(parents=True)
        (zone / "name").write_text(name + "\n")
        (zone / "energy_uj").write_text("1000000\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
    monkeypatch.setattr(zeus.device.cpu.rapl, "RAPL_DIR", str(root))
    monkeypatch.setattr(zeus.device.cpu.rapl, "RaplWraparoundTracker", MockRaplTracker)

    def burn(package_joules: float, dram_joules: float = 0.0) -> None:
        for zone, joules in ((package, package_joules), (dram, dram_joules)):
            value = int((zone / "energy_uj").read_text()) + int(joules * 1e6)
            (zone / "energy_uj").write_text(f"{value}\n")

    return burn


# --- No hardware (this machine, for real) -------------------------------------------------------


def test_no_counter_gives_a_labelled_estimate_never_zero():
    # This machine has neither NVML nor RAPL: Zeus returns an empty measurement.
    with EnergyMeter("unit") as meter, meter.window("work"):
        busy(0.2)
    record = meter.record()
    assert record["measured"] is False
    assert record["devices"] == {} and record["hardware"] == {}
    assert record["source"] == f"estimate:{ESTIMATE_MODEL}"
    assert record["joules"] > 0
    assert record["joules"] == pytest.approx(record["estimate"]["joules"])
    # The estimate is the model applied to this process's own CPU time and memory (the busy loop
    # gets under 0.2 CPU-seconds when other processes share the cores, so no fixed lower bound).
    estimate = record["estimate"]
    assert 0.0 < estimate["cpu_seconds"] <= 2 * record["wall_time_s"]
    assert estimate["joules"] == pytest.approx(
        EstimateModel().joules(estimate["cpu_seconds"], record["wall_time_s"], estimate["peak_rss_gb"])
    )
    assert [w["window"] for w in record["windows"]] == ["work"]
    assert record["wall_time_s"] >= 0.2
    assert record["end_unix"] >= record["start_unix"]
    assert record["short_windows"] == []
    assert record["zeus_version"] == "0.16.0" and record["cpu_model"]
    json.dumps(record, allow_nan=False)  # the record is plain JSON


def test_estimate_model_arithmetic():
    model = EstimateModel(power_per_core_w=10.0, memory_w_per_gb=0.5)
    # 3 CPU-seconds at 10 W + 2 s x 4 GB x 0.5 W/GB
    assert model.joules(cpu_seconds=3.0, wall_seconds=2.0, memory_gb=4.0) == pytest.approx(34.0)


def test_idle_baseline_without_counters_has_no_idle_power():
    idle = measure_idle_power(0.05)
    assert idle["measured"] is False and idle["idle_power_w"] == {}
    with EnergyMeter("unit") as meter:
        busy(0.05)
    assert dynamic_joules(meter.record(), idle) is None  # an estimate has no idle component


def test_record_before_close_is_an_error():
    meter = EnergyMeter("unit")
    with pytest.raises(RuntimeError, match="before the meter was closed"):
        meter.record()


# --- MOCK NVML: Volta and newer (energy counter) ------------------------------------------------


def test_volta_counter_with_device_facts_and_sync_at_window_edges(gpus, monkeypatch):
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("unit") as meter:
        nvml.burn(100.0)
        for epoch in (1, 2):
            with meter.window(f"epoch{epoch}"):
                nvml.burn(300.0)
    record = meter.record()
    assert record["measured"] is True
    assert record["source"] == "nvml-counter"
    assert [w["joules"] for w in record["windows"]] == [pytest.approx(300.0), pytest.approx(300.0)]
    assert record["joules"] == pytest.approx(700.0)
    assert record["devices"]["gpu0"] == {
        "joules": pytest.approx(700.0),
        "source": "nvml-counter",
        "name": "NVIDIA H200 (MOCK)",
        "device_id": "gpu:GPU-MOCK-handle0",
    }
    assert record["hardware"]["gpu0"] | {} == {
        "kind": "gpu",
        "name": "NVIDIA H200 (MOCK)",
        "source": "nvml-counter",
        "cuda_index": 0,
        "nvml_index": 0,
        "uuid": "GPU-MOCK-handle0",
        "driver_version": "550.54.15",
        "device_id": "gpu:GPU-MOCK-handle0",
    }
    assert record["short_windows"] == []
    # Zeus synchronized GPU 0 at both edges of each of the three windows.
    assert nvml.sync.call_count == 6
    assert all(call.args[0] == [0] for call in nvml.sync.call_args_list)
    json.dumps(record, allow_nan=False)


def test_cuda_visible_devices_selects_the_job_gpu(gpus, monkeypatch):
    # SLURM gave the job GPUs 2 and 3 of a 4-GPU node; the job computes on cuda:0 = NVML GPU 2.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-07")
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE] * 4)
    with EnergyMeter("unit") as meter:
        nvml.burn(50.0, gpu=2)
        nvml.burn(999.0, gpu=3)  # another GPU's work is not this job's
    record = meter.record()
    assert list(record["devices"]) == ["gpu0"]
    assert record["devices"]["gpu0"]["joules"] == pytest.approx(50.0)
    assert record["hardware"]["gpu0"]["nvml_index"] == 2
    assert record["devices"]["gpu0"]["device_id"] == "gpu:GPU-MOCK-handle2"
    assert (record["cuda_visible_devices"], record["slurm_job_id"], record["slurm_node"]) == (
        "2,3",
        "4242",
        "gpu-node-07",
    )


def test_window_shorter_than_the_counter_period_is_approximated_and_flagged(gpus):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_VOLTA], idle_w=0.0, instant_w=200.0)
    with EnergyMeter("unit") as meter:
        nvml.burn(80.0)
        with meter.window("inference"):
            time.sleep(0.02)  # the counter does not tick: Zeus uses instant power x duration
    record = meter.record()
    window = record["windows"][0]
    assert window["short_window"] is True
    assert window["source"] == "nvml-instant-power"
    assert window["joules"] == pytest.approx(200.0 * window["wall_time_s"], rel=0.05)
    # The rule window's counter moved, but it lasted under 100 ms: flagged too, counter kept.
    assert record["source"] == "nvml-counter"
    assert record["short_windows"] == ["rule:unit", "inference"]


def test_a_cpu_only_rule_can_leave_the_gpu_out(gpus, rapl):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("quantize_model", gpu_indices=[]) as meter:
        nvml.burn(100.0)  # another job's GPU work, or just idle draw: not this rule's
        rapl(package_joules=7.0)
    record = meter.record()
    assert "gpu0" not in record["devices"] and record["source"] == "rapl+rapl-dram"
    assert record["joules"] == pytest.approx(7.0)


# --- MOCK NVML: before Volta (power integration) ------------------------------------------------


def test_pre_volta_gpu_is_power_integration(gpus, monkeypatch):
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    gpus([pynvml.NVML_DEVICE_ARCH_PASCAL])
    with EnergyMeter("unit") as meter, meter.window("epoch1"):
        time.sleep(0.05)
    record = meter.record()
    assert record["source"] == "nvml-power-integration"
    assert record["hardware"]["gpu0"]["source"] == "nvml-power-integration"
    window = record["windows"][0]
    assert window["joules"] == pytest.approx(MockPowerMonitor.watts * window["wall_time_s"])
    assert window["short_window"] is False


# --- Fake powercap tree: RAPL -------------------------------------------------------------------


def test_rapl_package_and_dram(rapl):
    with EnergyMeter("unit") as meter, meter.window("epoch1"):
        rapl(package_joules=40.0, dram_joules=5.0)
    record = meter.record()
    assert record["measured"] is True
    assert record["source"] == "rapl+rapl-dram"
    assert record["devices"]["cpu0"]["joules"] == pytest.approx(40.0)
    assert record["devices"]["dram0"]["joules"] == pytest.approx(5.0)
    assert record["joules"] == pytest.approx(45.0)
    assert record["devices"]["cpu0"]["device_id"] == "cpu:package0"
    assert record["hardware"]["cpu0"]["name"].endswith("(package 0)")
    assert record["short_windows"] == []  # RAPL updates every millisecond: no short-window flag


def test_gpu_and_rapl_together_sum_with_both_counters(gpus, rapl, monkeypatch):
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE])
    with EnergyMeter("unit") as meter:
        nvml.burn(300.0)
        rapl(package_joules=40.0)
    record = meter.record()
    assert record["source"] == "nvml-counter+rapl+rapl-dram"
    assert record["joules"] == pytest.approx(340.0)


# --- Idle baseline and dynamic energy ----------------------------------------------------------


def test_idle_baseline_and_dynamic_energy(gpus):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER], idle_w=60.0)
    idle = measure_idle_power(0.3)
    assert idle["idle_power_w"] == {"gpu:GPU-MOCK-handle0": pytest.approx(60.0, rel=0.05)}
    with EnergyMeter("unit") as meter:
        time.sleep(0.2)
        nvml.burn(500.0)
    record = meter.record()
    # Total = 500 J of work + 60 W of idle for the window; dynamic removes the idle share.
    assert record["joules"] == pytest.approx(500.0 + 60.0 * record["wall_time_s"], rel=0.01)
    assert dynamic_joules(record, idle) == pytest.approx(500.0, abs=2.0)
    assert dynamic_joules(record, {**idle, "host": "another-host"}) is None
    assert dynamic_joules(record, None) is None


def test_other_processes_loading_the_host_flag_the_window_busy_host():
    import os
    import subprocess
    import sys

    # Real load: one spinning process per core while this process sleeps through the window.
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # interpreters started, spinning
        with EnergyMeter("unit") as meter, meter.window("while_loaded"):
            time.sleep(1.0)
    finally:
        for spinner in spinners:
            spinner.wait()
    window = meter.windows[0]
    assert window["other_processes_cpu_share"] > 0.5  # they had the cores; we slept
    assert window["busy_host"] is True
    record = meter.record()
    assert "while_loaded" in record["busy_host_windows"]
    json.dumps(record, allow_nan=False)


def test_own_work_does_not_count_as_other_processes():
    import os

    with EnergyMeter("unit") as meter, meter.window("own_work"):
        busy(1.0)
    # One of our threads kept a core busy: 1/cpu_count of the host. Were it not subtracted, the
    # share would be at least that; what remains is the rest of the (quiet) test machine.
    own_share = 1.0 / (os.cpu_count() or 1)
    assert meter.windows[0]["other_processes_cpu_share"] < own_share / 2
