"""gpu_access.probe_gpu over MOCK NVML: which GPU Zeus meters, and why one is not metered.

No GPU and no NVML here: `zeus.device.gpu.nvidia.pynvml` is replaced by an autospec of the real
pynvml (tests/support/simulated_host/nvml.py), as Zeus's own tests do, and the UUID torch would give the
rule's CUDA device is injected through `gpu_access.torch_gpu_uuid`. Everything named MOCK stands in
for hardware this machine does not have.
"""

from types import SimpleNamespace

import pynvml
import pytest
import torch
import zeus.device.cpu
import zeus.device.gpu
from zeus.device.gpu import nvidia

from joulebench.devices import CPU, Placement
from joulebench.energy import estimate, gpu_access
from joulebench.energy.gpu_access import GpuAccess, probe_gpu
from joulebench.energy.meter import EnergyMeter
from simulated_host.nvml import autospec_pynvml

# A rule whose work runs on GPU 0. No CUDA here: torch's tensors stay on the CPU, its stand-in.
ON_GPU0 = Placement(torch.device("cpu"), 0)
A100_MIG_2G = "NVIDIA A100-SXM4-40GB MIG 2g.10gb"
NOT_SUPPORTED = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


@pytest.fixture(autouse=True)
def fresh_zeus_devices(monkeypatch):
    """Zeus caches device objects in module globals; each test starts and ends without them."""

    def reset():
        zeus.device.gpu._gpus = None
        zeus.device.cpu._cpus = None

    for variable in ("CUDA_VISIBLE_DEVICES", "ZEUSD_SOCK_PATH", "ZEUSD_HOST_PORT", "ZEUSD_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    reset()
    yield
    reset()


@pytest.fixture
def nvml(monkeypatch):
    """MOCK NVML with `count` Ampere GPUs named "NVIDIA A100-SXM4-40GB (MOCK)", UUIDs GPU-MOCK-handle<i>."""

    def install(count: int = 1):
        module = autospec_pynvml()
        module.nvmlDeviceGetCount.return_value = count
        module.nvmlDeviceGetArchitecture.return_value = pynvml.NVML_DEVICE_ARCH_AMPERE
        module.nvmlDeviceGetName.return_value = "NVIDIA A100-SXM4-40GB (MOCK)"
        module.nvmlDeviceGetUUID.side_effect = lambda handle: f"GPU-MOCK-{handle}"
        module.nvmlDeviceGetTotalEnergyConsumption.return_value = 1_000_000
        power = SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=90_000))
        module.nvmlDeviceGetFieldValues.return_value = [power]
        monkeypatch.setattr(nvidia, "pynvml", module)
        monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
        return module

    return install


def cuda_names_device(monkeypatch, name: str) -> None:
    """The device name torch would give the rule's CUDA device (MOCK: there is no CUDA here)."""
    monkeypatch.setattr(gpu_access, "gpu_name", lambda placement: name)
    monkeypatch.setattr(estimate, "gpu_name", lambda placement: name)


def test_a_readable_gpu_is_metered_with_its_zeus_index_and_every_field_described(nvml):
    nvml()
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.index, access.mig, access.instant_power) == (True, 0, False, True)
    assert access.describe() == {
        "used": True,
        "metered": True,
        "reason": None,
        "name": "NVIDIA A100-SXM4-40GB (MOCK)",
        "index": 0,
        "instant_power": True,
        "power_limit_w": 700.0,
        "default_power_limit_w": 700.0,
        "mig": False,
        "power_limit_capped": False,
    }


def test_a_cpu_rule_uses_no_gpu(nvml):
    nvml()
    assert probe_gpu(CPU) == GpuAccess(False)


# --- MIG: the counter NVML gives is the whole GPU's ---------------------------------------------


@pytest.mark.parametrize("visible", [None, "0"])
def test_a_mig_slice_shown_as_device_0_is_estimated_at_its_share_not_metered(nvml, monkeypatch, visible):
    # A container runtime exposes one slice as device 0: CUDA_VISIBLE_DEVICES is 0 or unset, and
    # NVML's device 0 is the whole A100 in MIG mode, its counter every tenant's energy.
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    module = nvml()
    module.nvmlDeviceGetMigMode.side_effect = None
    module.nvmlDeviceGetMigMode.return_value = [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]
    cuda_names_device(monkeypatch, A100_MIG_2G)
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.mig, access.index) == (False, True, None)
    assert access.reason.startswith("MIG slice") and "whole GPU" in access.reason and "2/7" in access.reason


def test_a_device_named_as_a_mig_slice_is_estimated_where_nvml_does_not_say_mig_mode(nvml, monkeypatch):
    nvml()  # nvmlDeviceGetMigMode answers NOT_SUPPORTED
    cuda_names_device(monkeypatch, A100_MIG_2G)
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.mig) == (False, True)


def test_a_mig_slice_of_unknown_profile_is_estimated_at_the_whole_board_and_says_so(nvml, monkeypatch):
    module = nvml()
    module.nvmlDeviceGetMigMode.side_effect = None
    module.nvmlDeviceGetMigMode.return_value = [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]
    cuda_names_device(monkeypatch, "NVIDIA A100-SXM4-40GB")
    access = probe_gpu(ON_GPU0)
    assert (
        access.mig is True and "slice profile is unknown" in access.reason and "whole board" in access.reason
    )


def test_the_meter_of_a_mig_slice_shown_as_device_0_estimates_its_share_of_the_board(nvml, monkeypatch):
    module = nvml()
    module.nvmlDeviceGetMigMode.side_effect = None
    module.nvmlDeviceGetMigMode.return_value = [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]
    cuda_names_device(monkeypatch, A100_MIG_2G)
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        pass
    record = meter.record()
    assert record["devices"] == {} and record["gpu"]["mig"] is True
    assert record["estimate"]["gpu"]["share_of_gpu"] == pytest.approx(2 / 7)


# --- CUDA's order against NVML's: the UUIDs decide ----------------------------------------------


def test_the_gpu_metered_is_the_one_whose_uuid_cuda_gives_the_rules_device(nvml, monkeypatch):
    # CUDA orders fastest first: its GPU 0 is NVML's GPU 1 on this host of two unlike GPUs.
    nvml(count=2)
    monkeypatch.setattr(gpu_access, "torch_gpu_uuid", lambda placement: "MOCK-handle1")
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.index) == (True, 1)


def test_the_meter_reads_the_gpu_whose_uuid_cuda_gives_the_rules_device(nvml, monkeypatch):
    module = nvml(count=2)
    module.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda handle: {"handle0": 5, "handle1": 9}[
        handle
    ]
    monkeypatch.setattr(gpu_access, "torch_gpu_uuid", lambda placement: "MOCK-handle1")
    with EnergyMeter("unit", placement=ON_GPU0) as meter:
        pass
    record = meter.record()
    assert list(record["devices"]) == ["gpu1"]
    assert record["devices"]["gpu1"]["device_id"] == "gpu:GPU-MOCK-handle1"
    assert record["gpu"]["index"] == 1


def test_a_gpu_zeus_does_not_read_is_estimated_and_the_reason_says_how_to_meter_it(nvml, monkeypatch):
    # CUDA_VISIBLE_DEVICES=1 is CUDA's GPU 1 (fastest first), but Zeus reads NVML's GPU 1.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    nvml(count=2)
    monkeypatch.setattr(gpu_access, "torch_gpu_uuid", lambda placement: "MOCK-handle0")
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.index) == (False, None)
    assert "GPU-MOCK-handle0" in access.reason and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in access.reason


def test_torch_gpu_uuid_is_the_uuid_torch_gives_the_cuda_device(monkeypatch):
    # MOCK CUDA device properties: torch prints a device's UUID without NVML's "GPU-" prefix.
    properties = SimpleNamespace(uuid="2b7f1a4e-8c1d-4e5f-9a0b-1c2d3e4f5a6b")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    assert gpu_access.torch_gpu_uuid(Placement(torch.device("cuda", 0), 0)) == properties.uuid
    assert gpu_access.torch_gpu_uuid(ON_GPU0) is None  # tensors on the CPU: nothing to compare


# --- The Zeus daemon ----------------------------------------------------------------------------


def test_a_zeus_daemon_that_is_down_is_named_with_what_to_do(nvml, monkeypatch, tmp_path):
    socket = tmp_path / "zeusd.sock"  # no daemon listens here
    monkeypatch.setenv("ZEUSD_SOCK_PATH", str(socket))
    nvml()
    access = probe_gpu(ON_GPU0)
    assert access.metered is False
    assert str(socket) in access.reason and "unreachable" in access.reason
    assert "start zeusd" in access.reason and "unset ZEUSD_SOCK_PATH" in access.reason


# --- Instant power and the power limit in force -------------------------------------------------


def test_a_gpu_without_instant_power_is_metered_and_says_instant_power_is_unreadable(nvml):
    module = nvml()
    module.nvmlDeviceGetFieldValues.return_value = [
        SimpleNamespace(nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED)
    ]
    access = probe_gpu(ON_GPU0)
    assert (access.metered, access.instant_power) == (True, False)


def test_without_instant_power_a_window_the_counter_missed_ends_flagged_instead_of_raising(nvml):
    # Zeus reads instant power at the end of every window its counter did not tick in, where it
    # approximates; on a GPU without the field that raised ZeusGPUNotSupportedError.
    module = nvml()
    module.nvmlDeviceGetFieldValues.return_value = [
        SimpleNamespace(nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED)
    ]
    with EnergyMeter("unit", placement=ON_GPU0) as meter, meter.window("epoch1"):
        pass
    record = meter.record()
    assert meter.monitor.approx_instant_energy is False
    assert record["gpu"]["instant_power"] is False
    assert record["short_windows"] == ["rule:unit", "epoch1"]
    assert record["devices"]["gpu0"]["source"] == "nvml-counter"


def test_a_power_limit_left_below_the_default_is_in_the_record(nvml):
    module = nvml()
    module.nvmlDeviceGetPowerManagementLimit.return_value = 300_000
    described = probe_gpu(ON_GPU0).describe()
    assert (described["power_limit_w"], described["default_power_limit_w"]) == (300.0, 700.0)
    assert described["power_limit_capped"] is True


def test_power_limits_nvml_does_not_give_are_none_and_the_gpu_still_metered(nvml):
    module = nvml()
    module.nvmlDeviceGetPowerManagementLimit.side_effect = NOT_SUPPORTED
    module.nvmlDeviceGetPowerManagementDefaultLimit.side_effect = NOT_SUPPORTED
    access = probe_gpu(ON_GPU0)
    assert access.metered is True
    assert (access.power_limit_w, access.default_power_limit_w, access.power_limit_capped) == (
        None,
        None,
        None,
    )
