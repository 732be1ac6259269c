"""The energy module over Zeus: no-hardware estimate, and counters injected the way Zeus tests do."""

import json
import time

import pytest
from zeus.monitor.energy import Measurement

from joulebench.energy import ESTIMATE_MODEL, EnergyMeter, EstimateModel


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def test_no_counter_gives_a_labelled_estimate_never_zero():
    # This machine has neither NVML nor RAPL: Zeus returns an empty measurement.
    with EnergyMeter("unit") as meter, meter.window("work"):
        busy(0.2)
    record = meter.record()
    assert record["measured"] is False
    assert record["devices"] == {}
    assert record["source"] == f"estimate:{ESTIMATE_MODEL}"
    assert record["joules"] > 0
    assert record["joules"] == pytest.approx(record["estimate"]["joules"])
    # 0.2 s of one busy core at 12 W is about 2.4 J, plus memory.
    assert 1.0 < record["estimate"]["joules"] < 10.0
    assert record["estimate"]["cpu_seconds"] >= 0.15
    assert [w["window"] for w in record["windows"]] == ["work"]
    assert record["wall_time_s"] >= 0.2
    assert record["end_unix"] >= record["start_unix"]
    json.dumps(record, allow_nan=False)  # the record is plain JSON


def test_estimate_model_arithmetic():
    model = EstimateModel(power_per_core_w=10.0, memory_w_per_gb=0.5)
    # 3 CPU-seconds at 10 W + 2 s x 4 GB x 0.5 W/GB
    assert model.joules(cpu_seconds=3.0, wall_seconds=2.0, memory_gb=4.0) == pytest.approx(34.0)


class FakeGPUs:
    """Stands in for zeus.device.gpu GPUs, as Zeus's own tests inject device objects (MOCK: no GPU here)."""

    def __init__(self, volta: bool):
        self.volta = volta

    def supports_get_total_energy_consumption(self, index):
        return self.volta

    def get_name(self, index):
        return "MOCK NVIDIA H200"


class FakeMonitor:
    """Mock ZeusMonitor returning fixed Measurements (MOCK: hardware absent)."""

    def __init__(self, gpu_joules, cpu_joules=None, volta=True):
        self.gpu_indices = list(gpu_joules)
        self.cpu_indices = list(cpu_joules or {})
        self.gpus = FakeGPUs(volta)
        self.gpu_joules, self.cpu_joules = gpu_joules, cpu_joules
        self.open = set()

    def begin_window(self, key):
        self.open.add(key)

    def end_window(self, key):
        self.open.remove(key)
        return Measurement(time=1.5, gpu_energy=dict(self.gpu_joules), cpu_energy=self.cpu_joules)


def test_measured_gpu_and_rapl_carry_their_counters():
    monitor = FakeMonitor({0: 300.0}, {0: 40.0})
    with EnergyMeter("unit", monitor=monitor) as meter, meter.window("epoch1"):
        pass
    record = meter.record()
    assert record["measured"] is True
    assert record["joules"] == pytest.approx(340.0)
    assert record["devices"]["gpu0"] == {
        "joules": 300.0,
        "source": "nvml-counter",
        "name": "MOCK NVIDIA H200",
    }
    assert record["devices"]["cpu0"]["source"] == "rapl"
    assert record["source"] == "nvml-counter+rapl"
    assert monitor.open == set()


def test_pre_volta_gpu_is_labelled_power_integration():
    with EnergyMeter("unit", monitor=FakeMonitor({0: 10.0}, volta=False)) as meter:
        pass
    assert meter.record()["devices"]["gpu0"]["source"] == "nvml-power-integration"


def test_record_before_close_is_an_error():
    meter = EnergyMeter("unit", monitor=FakeMonitor({0: 1.0}))
    with pytest.raises(RuntimeError, match="before the meter was closed"):
        meter.record()
