"""The energy module over a REAL ZeusMonitor: no hardware here, and NVML/RAPL mocked the way Zeus's tests do.

Zeus's own suite (ml-energy/zeus tests/test_monitor.py, tests/device/cpu/test_rapl.py) replaces
`zeus.device.gpu.nvidia.pynvml` with an autospec MagicMock that keeps NVML's real constants,
resets the module-level device caches, and replaces the processes that poll hardware. We do the
same and build a real ZeusMonitor (and a real RAPLCPUs over a fake powercap tree), so our
integration is tested against Zeus's real window arithmetic. Everything named MOCK stands in for
hardware this machine does not have.
"""

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from types import SimpleNamespace
from unittest import mock

import psutil
import pynvml
import pytest
import torch
import zeus.device.cpu
import zeus.device.cpu.rapl
import zeus.device.gpu
import zeus.monitor.energy
import zeus.utils.framework
from zeus.device.gpu import nvidia

from conftest import ROOT
from joulebench.devices import CPU, Placement
from joulebench.energy import estimate, gpu_access, process
from joulebench.energy import meter as energy
from joulebench.energy.estimate import ESTIMATE_MODEL, EstimateModel
from joulebench.energy.idle import idle_record
from joulebench.energy.meter import EnergyMeter
from joulebench.report.columns import dynamic_joules
from joulebench.train import checkpoint
from simulated_host.nvml import autospec_pynvml

# A rule whose work runs on GPU 0. No CUDA here: torch's tensors stay on the CPU, its stand-in.
ON_GPU0 = Placement(torch.device("cpu"), 0)


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
        self.module = autospec_pynvml()
        self.started = time.time()
        self.idle_w = idle_w
        self.burned_mj = {f"handle{i}": 0.0 for i in range(len(archs))}
        arch_of = {f"handle{i}": arch for i, arch in enumerate(archs)}
        nvml = self.module
        nvml.nvmlDeviceGetCount.return_value = len(archs)
        nvml.nvmlDeviceGetArchitecture.side_effect = arch_of.__getitem__
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H200 (MOCK)"
        nvml.nvmlDeviceGetUUID.side_effect = lambda handle: f"GPU-MOCK-{handle}"
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


def test_objects_alive_before_the_windows_are_left_out_of_later_collections():
    """A full garbage collection scans every object (torch's included): inside a window it would
    charge that scan to the work. The meter collects and freezes them before its first window."""
    import gc

    gc.unfreeze()
    held = [[index] for index in range(50_000)]  # long-lived objects, as a loaded model's are
    with EnergyMeter("unit") as meter, meter.window("work"):
        frozen = gc.get_freeze_count()
        busy(0.01)
    assert frozen >= len(held)


def test_estimate_model_arithmetic():
    model = EstimateModel(power_per_core_w=10.0, memory_w_per_gb=0.5)
    # 3 CPU-seconds at 10 W + 2 s x 4 GB x 0.5 W/GB
    assert model.joules(cpu_seconds=3.0, wall_seconds=2.0, memory_gb=4.0) == pytest.approx(34.0)


def test_idle_baseline_without_counters_has_no_idle_power():
    idle = idle_record(0.05)
    assert idle["measured"] is False and idle["idle_power_w"] == {}
    with EnergyMeter("unit") as meter:
        busy(0.05)
    assert dynamic_joules(meter.record(), idle) is None  # an estimate has no idle component


def test_record_before_close_is_an_error():
    meter = EnergyMeter("unit")
    with pytest.raises(RuntimeError, match="before the meter was closed"):
        meter.record()


# --- MOCK NVML: Volta and newer (energy counter) ------------------------------------------------


def test_volta_counter_beside_the_estimated_cpu_with_device_facts_and_sync(gpus, monkeypatch):
    # NVML readable, RAPL not (the usual cluster node): the measured GPU figure and the estimated
    # CPU figure side by side, each labelled, and the total says it includes both.
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    syncs = mock.MagicMock()
    monkeypatch.setattr(Placement, "synchronize", syncs)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        nvml.burn(100.0)
        for epoch in (1, 2):
            with meter.window(f"epoch{epoch}"):
                nvml.burn(300.0)
    record = meter.record()
    assert record["measured"] is False  # part of the total is an estimate
    assert record["source"] == f"estimate:{ESTIMATE_MODEL}+nvml-counter"
    assert [w["measured_joules"] for w in record["windows"]] == [pytest.approx(300.0), pytest.approx(300.0)]
    assert record["measured_joules"] == pytest.approx(700.0)
    parts = {part["part"]: part for part in record["parts"]}
    assert set(parts) == {"gpu0", "cpu:estimate", "dram:estimate"}
    assert parts["gpu0"] == {"part": "gpu0", "joules": pytest.approx(700.0), "source": "nvml-counter"}
    assert parts["cpu:estimate"]["joules"] == pytest.approx(record["estimate"]["cpu_joules"])
    assert parts["cpu:estimate"]["source"] == f"estimate:{ESTIMATE_MODEL}"
    assert record["joules"] == pytest.approx(700.0 + record["estimated_joules"])
    assert record["estimated_joules"] == pytest.approx(
        record["estimate"]["cpu_joules"] + record["estimate"]["memory_joules"]
    )
    assert record["devices"]["gpu0"] == {
        "joules": pytest.approx(700.0),
        "source": "nvml-counter",
        "name": "NVIDIA H200 (MOCK)",
        "device_id": "gpu:GPU-MOCK-handle0",
        "covers": ["gpu"],
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
        "covers": ["gpu"],
    }
    assert record["placement"] == {"device": "cuda", "torch_device": "cpu", "gpu_cuda_index": 0}
    assert record["gpu"] == {
        "used": True,
        "metered": True,
        "reason": None,
        "name": "NVIDIA H200 (MOCK)",
        "index": 0,
        "instant_power": True,
        "power_limit_w": 700.0,
        "default_power_limit_w": 700.0,
        "power_limit_capped": False,
        "mig": False,
    }
    assert record["short_windows"] == []
    # The device the rule computes on is synchronized at both edges of each of the three windows;
    # Zeus's own sync (torch.cuda.synchronize of the metered GPU) is never called.
    assert syncs.call_count == 6
    nvml.sync.assert_not_called()
    json.dumps(record, allow_nan=False)


def test_cuda_visible_devices_selects_the_job_gpu(gpus, monkeypatch):
    # SLURM gave the job GPUs 2 and 3 of a 4-GPU node; the job computes on cuda:0 = NVML GPU 2.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-07")
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE] * 4)
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
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


def test_cuda_visible_devices_as_gpu_uuids_selects_the_job_gpu(gpus, monkeypatch):
    # Some schedulers name GPUs by UUID; Zeus parses integers only.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-MOCK-handle2,GPU-MOCK-handle3")
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE] * 4)
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        nvml.burn(50.0, gpu=2)
        nvml.burn(999.0, gpu=3)
    record = meter.record()
    assert record["devices"]["gpu0"]["joules"] == pytest.approx(50.0)
    assert record["hardware"]["gpu0"]["nvml_index"] == 2
    # The job's environment is left as the scheduler set it.
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-MOCK-handle2,GPU-MOCK-handle3"


def test_nvml_without_permission_estimates_the_gpu_and_says_why(gpus):
    # NVML_ERROR_NO_PERMISSION: ZeusMonitor re-raises it (it catches only ZeusGPUInitError).
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE])
    nvml.module.nvmlDeviceGetHandleByIndex.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    with EnergyMeter("unit", EstimateModel(gpu_power_w=300.0), ON_GPU0) as meter, meter.window("epoch1"):
        busy(0.1)
    record = meter.record()
    assert record["devices"] == {} and record["measured"] is False
    assert record["gpu"]["used"] is True and record["gpu"]["metered"] is False
    assert "Insufficient Permissions" in record["gpu"]["reason"]
    gpu_part = next(part for part in record["parts"] if part["part"] == "gpu:estimate")
    assert gpu_part["joules"] == pytest.approx(300.0 * record["wall_time_s"])
    assert record["estimate"]["gpu"]["board_power_source"] == "energy.estimate.gpu_power_w"


def test_unreadable_gpu_of_unknown_board_power_asks_for_gpu_power_w(gpus):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_AMPERE])
    nvml.module.nvmlDeviceGetHandleByIndex.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(RuntimeError, match="set energy.estimate.gpu_power_w"):
        EnergyMeter("unit", placement=ON_GPU0)


def test_mig_slice_is_estimated_at_its_share_of_the_board(gpus, monkeypatch):
    # NVML cannot meter a MIG slice: the estimate charges the slice's share of the board.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5c89d5d6-0f5b-5b4d-9c1e-1f2a3b4c5d6e")
    for module in (estimate, gpu_access):
        monkeypatch.setattr(module, "gpu_name", lambda placement: "NVIDIA A100-SXM4-40GB MIG 2g.10gb")
    gpus([pynvml.NVML_DEVICE_ARCH_AMPERE])
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        busy(0.1)
    record = meter.record()
    assert record["gpu"]["reason"].startswith("MIG slice") and "(2/7)" in record["gpu"]["reason"]
    assert record["gpu"]["mig"] is True
    term = record["estimate"]["gpu"]
    assert (term["board_power_w"], term["share_of_gpu"]) == (400.0, pytest.approx(2 / 7))
    assert term["board_power_source"] == "NVIDIA A100 SXM datasheet"
    assert record["estimate"]["gpu_joules"] == pytest.approx(400.0 * 2 / 7 * record["wall_time_s"])


def test_window_shorter_than_the_counter_period_is_approximated_and_flagged(gpus):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_VOLTA], idle_w=0.0, instant_w=200.0)
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        nvml.burn(80.0)
        with meter.window("inference"):
            time.sleep(0.02)  # the counter does not tick: Zeus uses instant power x duration
    record = meter.record()
    window = record["windows"][0]
    assert window["short_window"] is True
    assert window["devices"]["gpu0"]["source"] == "nvml-instant-power"
    assert window["measured_joules"] == pytest.approx(200.0 * window["wall_time_s"], rel=0.05)
    # The rule window's counter moved, but it lasted under 100 ms: flagged too, counter kept.
    assert record["devices"]["gpu0"]["source"] == "nvml-counter"
    assert record["short_windows"] == ["rule:unit", "inference"]


def test_a_counter_ticking_after_zeus_read_it_is_still_labelled_instant_power(gpus):
    # Zeus read the counter unchanged and used instant power; a later read sees a tick. The label
    # must follow Zeus's own reading (the counter was re-read after end_window before).
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER], instant_w=200.0)
    armed = []
    nvml.module.nvmlDeviceGetFieldValues.side_effect = lambda *args: (
        armed.append(True)
        or [SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=200_000))]
    )
    counter = nvml.counter_mj

    def tick_after_zeus_end_read(handle):
        value = counter(handle)
        if armed:  # Zeus read instant power, then reads the counter: tick right after that read
            armed.clear()
            nvml.burn(5.0)
        return value

    nvml.module.nvmlDeviceGetTotalEnergyConsumption.side_effect = tick_after_zeus_end_read
    with EnergyMeter("unit", placement=ON_GPU0) as meter, meter.window("inference"):
        pass
    window = meter.windows[0]
    assert window["devices"]["gpu0"]["source"] == "nvml-instant-power"
    assert window["short_window"] is True


def test_cpu_only_rules_never_meter_the_gpu(gpus, rapl):
    # Rules that compute on the CPU (evaluate int8, quantize, prepare) meter no GPU.
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("quantize_model", placement=CPU) as meter:
        nvml.burn(100.0)  # another job's GPU work, or just idle draw: not this rule's
        rapl(package_joules=7.0, dram_joules=1.0)
    record = meter.record()
    assert "gpu0" not in record["devices"] and record["source"] == "rapl+rapl-dram"
    assert record["joules"] == pytest.approx(8.0) and record["measured"] is True
    assert record["gpu"]["used"] is False and record["gpu"]["metered"] is False
    assert record["gpu"]["reason"] is None and record["gpu"]["index"] is None
    assert "gpu" not in json.dumps(record["hardware"])


def test_nvml_sees_a_gpu_torch_cannot_use_so_training_meters_the_cpu(gpus):
    # NVML sees a GPU but torch has no CUDA (this machine): Zeus's sync must not reach CUDA while
    # training runs on the CPU. Zeus's real sync is left in place here.
    from joulebench.devices import accelerator
    from joulebench.models import build_model
    from joulebench.train.loop import TrainSettings, train

    gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    zeus.monitor.energy.sync_execution_fn = zeus.utils.framework.sync_execution
    placement = accelerator()
    assert placement == CPU
    arrays = {
        "train_x": torch.rand(64, 1, 8, 8).numpy(),
        "train_y": torch.randint(0, 10, (64,)).numpy(),
        "val_x": torch.rand(16, 1, 8, 8).numpy(),
        "val_y": torch.randint(0, 10, (16,)).numpy(),
    }
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10})
    with EnergyMeter("train_model", placement=placement) as meter:
        train(model, arrays, TrainSettings(epochs=1, batch_size=32, lr=0.01), meter)
    record = meter.record()
    assert record["devices"] == {} and record["gpu"]["used"] is False
    assert record["placement"]["torch_device"] == "cpu"


# --- MOCK NVML: before Volta (power integration) ------------------------------------------------


def test_pre_volta_gpu_is_power_integration(gpus, monkeypatch):
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    gpus([pynvml.NVML_DEVICE_ARCH_PASCAL])
    with EnergyMeter("unit", placement=ON_GPU0) as meter, meter.window("epoch1"):
        time.sleep(0.05)
    record = meter.record()
    assert record["devices"]["gpu0"]["source"] == "nvml-power-integration"
    assert record["hardware"]["gpu0"]["source"] == "nvml-power-integration"
    window = record["windows"][0]
    assert window["measured_joules"] == pytest.approx(MockPowerMonitor.watts * window["wall_time_s"])
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
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        nvml.burn(300.0)
        rapl(package_joules=40.0, dram_joules=2.0)
    record = meter.record()
    assert record["source"] == "nvml-counter+rapl+rapl-dram"
    assert record["joules"] == pytest.approx(342.0) and record["measured"] is True


def test_rapl_window_across_a_counter_wrap_reads_the_energy_not_a_negative_number(tmp_path, monkeypatch):
    # Zeus's real wrap-around tracker (a spawned process) with a counter that wraps inside the
    # window. pytest's main module is guarded, as the rule scripts are.
    zone = tmp_path / "intel-rapl" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text(f"{1_000 * 10**6}\n")  # wraps at 1,000 J
    (zone / "energy_uj").write_text(f"{990 * 10**6}\n")
    monkeypatch.setattr(zeus.device.cpu.rapl, "RAPL_DIR", str(tmp_path / "intel-rapl"))
    with EnergyMeter("unit") as meter:
        time.sleep(2.5)  # the tracker is up and has read the counter before it wraps
        (zone / "energy_uj").write_text(f"{190 * 10**6}\n")  # 990 -> 1,000 -> 190: 200 J
        time.sleep(1.5)  # it polls once a second
    record = meter.record()
    assert record["devices"]["cpu0"]["joules"] == pytest.approx(200.0)


# --- Idle baseline and dynamic energy ----------------------------------------------------------


def test_idle_baseline_and_dynamic_energy(gpus):
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER], idle_w=60.0)
    idle = idle_record(0.3, placement=ON_GPU0)
    assert idle["idle_power_w"] == {"gpu:GPU-MOCK-handle0": pytest.approx(60.0, rel=0.05)}
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        time.sleep(0.2)
        nvml.burn(500.0)
    record = meter.record()
    # Total = 500 J of work + 60 W of idle for the window; dynamic removes the idle share and keeps
    # the estimated CPU and memory parts (an estimate has no idle share).
    assert record["measured_joules"] == pytest.approx(500.0 + 60.0 * record["wall_time_s"], rel=0.01)
    assert dynamic_joules(record, idle) == pytest.approx(500.0 + record["estimated_joules"], abs=2.0)
    assert dynamic_joules(record, {**idle, "host": "another-host"}) is None
    assert dynamic_joules(record, None) is None


def test_host_busy_time_counts_guest_time_once(monkeypatch):
    # psutil on Linux: guest and guest_nice are already inside user and nice.
    times = SimpleNamespace(user=10.0, nice=2.0, system=3.0, idle=50.0, iowait=1.0, irq=0.5, softirq=0.5,
                            steal=0.0, guest=4.0, guest_nice=1.0)  # fmt: skip
    fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
    cpu_times = type(
        "scputimes", (tuple,), {name: property(lambda self, i=i: self[i]) for i, name in enumerate(fields)}
    )
    monkeypatch.setattr(psutil, "cpu_times", lambda: cpu_times(getattr(times, f) for f in fields))
    assert energy.host_busy_cpu_seconds() == pytest.approx(10.0 + 2.0 + 3.0 + 0.5 + 0.5)


def test_a_resumed_record_keeps_the_busy_host_flags_of_earlier_epochs():
    # The merge of checkpointed epochs keeps busy_host_windows as it keeps short_windows.
    with EnergyMeter("train_model") as meter, meter.window("epoch2"):
        busy(0.05)
    prior = {**meter.windows[0], "window": "epoch1", "busy_host": True}
    merged = checkpoint.merge_prior_energy(meter.record(), [prior], 1)
    assert "epoch1" in merged["busy_host_windows"]
    assert merged["joules"] == pytest.approx(meter.record()["joules"] + prior["joules"])
    part = {p["part"]: p for p in merged["parts"]}["cpu:estimate"]
    assert part["joules"] == pytest.approx(
        meter.record()["estimate"]["cpu_joules"] + prior["estimate"]["cpu_joules"]
    )


def test_other_processes_loading_the_host_flag_the_window_busy_host():
    import os
    import subprocess
    import sys

    from joulebench.energy.contention import QUIET_MAX_WAIT_S

    # Real load: one spinning process per core while this process sleeps through the window, which
    # opens after the meter waited its longest for a quiet host.
    # They are started detached (a shell that exits at once): a process this one started is its own.
    spin = f"import time\nend = time.time() + 3 + {QUIET_MAX_WAIT_S}\nwhile time.time() < end: pass"
    detach = f"{shlex.quote(sys.executable)} -c {shlex.quote(spin)} > /dev/null 2>&1 & echo $!"
    spinners = [
        int(subprocess.run(["sh", "-c", detach], capture_output=True, text=True, check=True).stdout)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        time.sleep(0.5)  # interpreters started, spinning
        with EnergyMeter("unit") as meter, meter.window("while_loaded"):
            time.sleep(1.0)
    finally:
        for pid in spinners:
            # An error: it ended already (and its new parent reaped it).
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=30)
    window = meter.windows[0]
    assert window["other_processes_cpu_share"] > 0.5  # they had the cores; we slept
    assert window["busy_host"] is True
    record = meter.record()
    assert "while_loaded" in record["busy_host_windows"]
    assert record["quiet_host_wait"]["quiet"] is False
    assert record["quiet_host_wait"]["seconds"] == pytest.approx(QUIET_MAX_WAIT_S)
    json.dumps(record, allow_nan=False)


@pytest.mark.quiet  # other work on the host fills the windows this test needs empty
def test_own_work_does_not_count_as_other_processes():
    # One of our threads keeps a core busy: 1/cpu_count of the host. Were it not subtracted, the
    # share would be at least that; what remains is the rest of the machine. Other work on a shared
    # machine can fill a window on its own, so the claim needs one window of three to be quiet.
    own_share = 1.0 / (os.cpu_count() or 1)
    shares = []
    for _ in range(3):
        with EnergyMeter("unit") as meter, meter.window("own_work"):
            busy(1.0)
        shares.append(meter.windows[0]["other_processes_cpu_share"])
        if shares[-1] < own_share / 2:
            break
    assert min(shares) < own_share / 2, shares


def test_idle_baseline_is_on_by_default_only_where_a_counter_exists(gpus, rapl):
    from joulebench.config import AUTO_IDLE_SECONDS, idle_baseline_seconds

    assert idle_baseline_seconds(3) == 3.0 and idle_baseline_seconds(0) == 0.0
    zeus.device.cpu.rapl.rapl_is_available.cache_clear()
    assert idle_baseline_seconds("auto") == AUTO_IDLE_SECONDS  # the fake powercap tree is readable


def test_idle_baseline_is_off_by_default_where_everything_is_estimated():
    from joulebench.config import idle_baseline_seconds

    assert idle_baseline_seconds("auto") == 0.0  # this machine: no NVML, no RAPL


def test_a_rule_job_imports_neither_scikit_learn_nor_pandas_until_it_uses_them():
    # Each job pays its imports (bench_job_overhead.py): Zeus's module-level sklearn.metrics import
    # (0.75 s) is deferred to its first call, and pandas (0.2 s) to the first table a stage writes.
    code = (
        "import sys, joulebench.data.stages, joulebench.energy.meter;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'pandas', 'pyarrow'}));"
        "import zeus.monitor.power as power; print(power.auc([0.0, 1.0, 2.0], [1.0, 3.0, 1.0]));"
        "print(joulebench.data.stages.pd.DataFrame({'a': [1]}).shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "workflow" / "scripts", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["[]", "4.0", "(1, 1)"]


# --- Host-speed index, steal time, frequency (drift of the host itself) -----------------


def test_the_host_speed_index_is_taken_before_the_window_opens_and_never_charged(monkeypatch):
    from joulebench.energy import host_speed

    probes = []

    def slow_probe(before_window):
        # A probe that costs 0.3 CPU-seconds: were it inside a window, the window would show them.
        busy(0.3)
        probes.append((before_window, time.time()))
        return {"host_speed": 1234.0, "host_speed_reference": host_speed.REFERENCE,
                "host_speed_probe_s": 0.3, "host_speed_probed_before": before_window}  # fmt: skip

    monkeypatch.setattr(host_speed, "probe", slow_probe)
    with EnergyMeter("unit") as meter, meter.window("work"):
        busy(0.05)
    record = meter.record()
    # One probe, before the outermost (rule) window: the phase window inside it is not probed again.
    assert [name for name, _ in probes] == ["rule:unit"]
    for window in (record, record["windows"][0]):
        assert window["start_unix"] >= probes[0][1] and window["estimate"]["cpu_seconds"] < 0.25
        assert window["host_speed"] == 1234.0 and window["host_speed_probed_before"] == "rule:unit"
        assert window["host_speed_reference"] == host_speed.REFERENCE


def test_every_window_records_host_speed_steal_and_frequency():
    with EnergyMeter("unit") as meter, meter.window("work"):
        busy(0.1)
    record = meter.record()
    for window in (record, *record["windows"]):
        assert window["host_speed"] > 0 and window["host_speed_reference"].startswith("torch-matmul")
        assert window["host_speed_probe_s"] > 0.0
        assert window["steal_share"] is None or 0.0 <= window["steal_share"] <= 1.0
        assert window["cpu_freq_mhz"] is None or window["cpu_freq_mhz"] > 0
    json.dumps(record, allow_nan=False)


@pytest.mark.quiet  # a timing: other work on the host slows the probe down
def test_the_host_speed_probe_takes_a_fraction_of_a_second():
    from joulebench.energy import host_speed

    assert host_speed.probe("w")["host_speed_probe_s"] < 0.5  # about 20 ms on this project's 2-core VM


def test_the_probe_restores_the_callers_thread_count():
    from joulebench.energy import host_speed

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert host_speed.probe("w")["host_speed"] > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


PROC_STAT = """cpu  1000 10 300 5000 40 0 50 100 30 0
cpu0 500 5 150 2500 20 0 25 50 15 0
intr 12345
"""


def test_steal_share_from_proc_stat():
    from joulebench.energy import host_speed

    start = host_speed.parse_proc_stat(PROC_STAT)
    assert start == {"user": 1000, "nice": 10, "system": 300, "idle": 5000, "iowait": 40, "irq": 0,
                     "softirq": 50, "steal": 100}  # fmt: skip
    # 200 ticks elapse on all CPUs, 30 of them stolen by the hypervisor (guest time is not counted twice).
    end = host_speed.parse_proc_stat("cpu  1100 10 320 5040 40 0 60 130 90 0\n")
    assert host_speed.steal_share(start, end) == pytest.approx(30 / 200)
    assert host_speed.steal_share(start, start) is None  # no tick elapsed
    assert host_speed.steal_share(None, end) is None  # no /proc/stat (not Linux)
    old_kernel = host_speed.parse_proc_stat("cpu  1 2 3 4 5 6 7\n")
    assert old_kernel["steal"] == 0
    assert host_speed.parse_proc_stat("intr 1\n") is None
    assert host_speed.read_proc_stat("/nonexistent/stat") is None


class BusyItems(torch.utils.data.Dataset):
    """Items that each take `seconds` of CPU to make, as an augmenting dataset's do."""

    def __init__(self, count: int, seconds: float):
        self.count, self.seconds = count, seconds

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        busy(self.seconds)
        return torch.zeros(1)


def test_running_loader_workers_are_charged_as_the_rules_own_cpu_time():
    # Persistent DataLoader workers outlive every epoch window; their CPU time reaches
    # RUSAGE_CHILDREN only once they are reaped, so it must be read from the running processes.
    batches = torch.utils.data.DataLoader(BusyItems(8, 0.08), num_workers=1, persistent_workers=True)
    with EnergyMeter("unit") as meter:
        with meter.window("epoch1"):
            for _ in batches:
                pass
        worker_alive = any(child.is_running() for child in psutil.Process().children())
    assert worker_alive
    epoch = meter.windows[0]
    # The worker made 8 items of 80 ms each, while this process mostly waited for them.
    assert epoch["estimate"]["cpu_seconds"] >= 0.5
    assert os.getpid() in process.own_process_ids()


def test_a_grace_superchip_counter_covers_its_cpu_and_memory_so_nothing_is_added_beside_it(gpus, monkeypatch):
    # GH200/GB200: NVML's counter reads the whole module (GPU, Grace CPU, LPDDR). Adding the CPU and
    # memory estimate beside it would count the CPU twice.
    monkeypatch.setattr(Placement, "synchronize", lambda self: None)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    nvml.module.nvmlDeviceGetC2cModeInfoV.side_effect = None
    nvml.module.nvmlDeviceGetC2cModeInfoV.return_value = SimpleNamespace(isC2cEnabled=1)
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        nvml.burn(500.0)
    record = meter.record()
    assert [part["part"] for part in record["parts"]] == ["gpu0"]
    assert record["joules"] == pytest.approx(500.0)
    assert record["measured"] is True
    assert record["hardware"]["gpu0"]["covers"] == ["gpu", "cpu", "dram"]
    assert "Grace" in record["hardware"]["gpu0"]["scope"]


def _compute_process(pid: int, mib: int = 512):
    return SimpleNamespace(pid=pid, usedGpuMemory=mib * 2**20)


def test_another_process_on_the_metered_gpu_flags_the_window_busy_gpu(gpus, monkeypatch):
    monkeypatch.setattr(Placement, "synchronize", lambda self: None)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    stranger = 4_000_000  # above any pid_max: never one of ours
    nvml.module.nvmlDeviceGetComputeRunningProcesses.return_value = [
        _compute_process(os.getpid()),
        _compute_process(stranger, 2048),
    ]
    with EnergyMeter("unit", placement=ON_GPU0) as meter, meter.window("epoch1"):
        pass
    record = meter.record()
    assert record["busy_gpu_windows"] == ["rule:unit", "epoch1"]
    assert record["windows"][0]["other_gpu_processes"] == [
        {"device": "gpu0", "pid": stranger, "used_gpu_memory_mib": 2048.0}
    ]


def test_the_rules_own_processes_and_peer_ranks_on_the_gpu_are_not_others(gpus, monkeypatch):
    monkeypatch.setattr(Placement, "synchronize", lambda self: None)
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    peer = 4_000_001
    nvml.module.nvmlDeviceGetComputeRunningProcesses.return_value = [
        _compute_process(os.getpid()),
        _compute_process(peer),
    ]
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        meter.peer_pids = {peer}
    record = meter.record()
    assert record["busy_gpu"] is False
    assert record["other_gpu_processes"] == []


def test_process_ids_of_another_pid_namespace_are_unknown_not_busy(gpus, monkeypatch):
    # In a container NVML reports the host's process IDs: none is ours though this process computes
    # there, so NVML's list cannot be told apart and the window is not flagged.
    nvml = gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    nvml.module.nvmlDeviceGetComputeRunningProcesses.return_value = [_compute_process(4_000_002)]
    computing = Placement(torch.device("cuda", 0), 0)
    monkeypatch.setattr(Placement, "synchronize", lambda self: None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(gpu_access, "torch_gpu_uuid", lambda placement: "GPU-MOCK-handle0")
    monkeypatch.setattr(gpu_access, "gpu_name", lambda placement: "NVIDIA H200 (MOCK)")
    with EnergyMeter("unit", placement=computing) as meter:
        pass
    record = meter.record()
    assert record["other_gpu_processes"] is None
    assert record["busy_gpu"] is False


def test_a_cpu_rule_has_no_gpu_neighbours_to_report(gpus):
    gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("unit") as meter:
        pass
    assert meter.record()["other_gpu_processes"] == []


def test_every_record_says_what_its_joules_cover_and_leave_out(gpus, monkeypatch):
    monkeypatch.setattr(Placement, "synchronize", lambda self: None)
    gpus([pynvml.NVML_DEVICE_ARCH_HOPPER])
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        pass
    boundary = meter.record()["boundary"]
    # NVML reads the GPU; no RAPL here, so the CPU and memory are estimated.
    assert boundary["id"] == "cpu:estimate+dram:estimate+gpu"
    assert boundary["covers"][2] == "gpu: the GPU board, as NVML counts it"
    assert any("PUE" in text for text in boundary["excludes"])
    assert any("power supply" in text for text in boundary["excludes"])
    with EnergyMeter("unit") as cpu_only:
        pass
    assert cpu_only.record()["boundary"]["id"] == "cpu:estimate+dram:estimate"


def test_the_other_processes_share_is_of_every_core_of_a_16_core_host(monkeypatch):
    # SIMULATED 16-core host on which other processes keep one core busy: the host's busy CPU
    # seconds are this process's own plus one second a second.
    started = time.monotonic()
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(
        energy, "host_busy_cpu_seconds", lambda: process.process_cpu_seconds() + time.monotonic() - started
    )
    with EnergyMeter("unit") as meter, meter.window("one_core_of_sixteen"):
        time.sleep(0.5)
    window = meter.windows[0]
    assert window["other_processes_cpu_share"] == pytest.approx(1 / 16, rel=0.25)
    assert window["busy_host"] is False
    assert meter.record()["quiet_host_wait"]["quiet"] is True
