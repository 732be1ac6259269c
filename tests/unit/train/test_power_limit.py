"""The GPU power-limit variant over Zeus's REAL GPU layer, with NVML mocked the way Zeus's tests do.

An autospec pynvml (tests/support/simulated_host/nvml.py) is installed as `zeus.device.gpu.nvidia.pynvml`;
its power limit is a state the MOCK keeps, so Zeus's own set/reset logic (which calls NVML only
when the limit changes) runs as on a real GPU, and every NVML setter call is recorded.
"""

import atexit
import os
import signal
import time
from types import SimpleNamespace
from unittest import mock

import pynvml
import pytest
import torch
import zeus.device.cpu
import zeus.device.gpu
import zeus.monitor.energy
from zeus.device.gpu import nvidia
from zeus.optimizer.power_limit import ZeusCost

from conftest import model_files
from joulebench import devices, store
from joulebench.config import resolved_config
from joulebench.devices import CPU, Placement
from joulebench.evaluate.stages import evaluate_model
from joulebench.train import checkpoint, resume
from joulebench.train.power_limit import PowerLimitError, held_power_limit, requested_mw
from joulebench.train.stages import train_model
from simulated_host.nvml import autospec_pynvml

# The rule's work "runs on GPU 0"; no CUDA here, so tensors stay on the CPU, its stand-in.
ON_GPU0 = Placement(torch.device("cpu"), 0)
DEFAULT_MW, ALLOWED_MW = 700_000, (200_000, 700_000)
SITE_CAP_MW = 500_000  # a cap the site keeps on its 700 W GPUs


class PowerLimitNVML:
    """MOCK NVML of one H200 whose power limit is kept as state: nvmlDeviceSetPowerManagementLimit
    changes it, nvmlDeviceGetPowerManagementLimit answers it (`limit_mw`, the default unless a cap
    is in force); records every setter call."""

    def __init__(self, permitted: bool = True, limit_mw: int = DEFAULT_MW):
        self.permitted = permitted
        self.limit_mw = limit_mw
        self.module = nvml = autospec_pynvml()
        nvml.nvmlDeviceGetCount.return_value = 1
        nvml.nvmlDeviceGetArchitecture.return_value = pynvml.NVML_DEVICE_ARCH_HOPPER
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H200 (MOCK)"
        # 300 W since the epoch: the counter moves with wall time; instant power for short windows.
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda handle: int(time.time() * 300_000)
        power = SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=300_000))
        nvml.nvmlDeviceGetFieldValues.return_value = [power]
        nvml.nvmlDeviceGetPowerManagementLimitConstraints.return_value = ALLOWED_MW
        nvml.nvmlDeviceGetPowerManagementDefaultLimit.return_value = DEFAULT_MW
        nvml.nvmlDeviceGetPowerManagementLimit.side_effect = lambda handle: self.limit_mw
        nvml.nvmlDeviceSetPowerManagementLimit.side_effect = self.set_limit
        self.persistence = pynvml.NVML_FEATURE_DISABLED
        nvml.nvmlDeviceGetPersistenceMode.side_effect = lambda handle: self.persistence
        nvml.nvmlDeviceSetPersistenceMode.side_effect = lambda handle, mode: setattr(
            self, "persistence", mode
        )

    def set_limit(self, handle, limit_mw):
        if not self.permitted:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        self.limit_mw = limit_mw

    @property
    def set_calls(self) -> list:
        return [call.args for call in self.module.nvmlDeviceSetPowerManagementLimit.call_args_list]


@pytest.fixture
def gpu(monkeypatch):
    """Install the MOCK GPU; Zeus's device caches start and end empty; no Zeus daemon."""

    def reset():
        zeus.device.gpu._gpus = None
        zeus.device.cpu._cpus = None

    def install(permitted=True, limit_mw=DEFAULT_MW):
        nvml = PowerLimitNVML(permitted, limit_mw)
        monkeypatch.setattr(nvidia, "pynvml", nvml.module)
        monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
        for name in ("ZEUSD_SOCK_PATH", "ZEUSD_HOST_PORT", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name, raising=False)
        return nvml

    reset()
    yield install
    reset()


def test_requested_limit_in_watts_or_as_a_fraction_of_the_largest_allowed():
    assert requested_mw({"power_limit_w": 250}, ALLOWED_MW) == 250_000
    assert requested_mw({"power_limit_fraction": 0.5}, ALLOWED_MW) == 350_000
    assert requested_mw({"power_limit_fraction": 1.0}, ALLOWED_MW) == 700_000


def test_set_then_reset_on_success_and_the_applied_limit_is_yielded(gpu):
    nvml = gpu()
    with held_power_limit(ON_GPU0, {"power_limit_w": 250}) as applied:
        assert nvml.limit_mw == 250_000
        assert nvml.set_calls == [("handle0", 250_000)]
    assert nvml.set_calls == [("handle0", 250_000), ("handle0", DEFAULT_MW)]
    assert nvml.limit_mw == DEFAULT_MW
    limit = applied.facts()["power_limit"]
    assert limit["applied_w"] == 250.0
    assert limit["allowed_w"] == [200.0, 700.0]
    assert limit["requested"] == {"power_limit_w": 250}
    assert limit["gpu_name"] == "NVIDIA H200 (MOCK)"


def test_reset_after_an_exception(gpu):
    nvml = gpu()
    with pytest.raises(FloatingPointError), held_power_limit(ON_GPU0, {"power_limit_fraction": 0.5}):
        raise FloatingPointError("loss became nan")
    assert nvml.set_calls == [("handle0", 350_000), ("handle0", DEFAULT_MW)]


def test_reset_after_sigterm(gpu):
    nvml = gpu()
    limit = held_power_limit(ON_GPU0, {"power_limit_w": 300})
    with pytest.raises(checkpoint.Preempted) as preempted, checkpoint.exit_on_sigterm(), limit:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this thread before the sleep ends
    assert preempted.value.code == checkpoint.SIGTERM_EXIT_STATUS
    assert nvml.set_calls == [("handle0", 300_000), ("handle0", DEFAULT_MW)]


def test_a_site_cap_in_force_before_comes_back_after_success_and_is_recorded(gpu, caplog):
    nvml = gpu(limit_mw=SITE_CAP_MW)
    with caplog.at_level("WARNING"), held_power_limit(ON_GPU0, {"power_limit_w": 250}) as applied:
        assert nvml.limit_mw == 250_000
    assert nvml.set_calls == [("handle0", 250_000), ("handle0", SITE_CAP_MW)]
    assert nvml.limit_mw == SITE_CAP_MW
    limit = applied.facts()["power_limit"]
    assert limit["previous_w"] == 500.0 and limit["restored_w"] == 500.0
    # The cap may be a killed run's leftover: the log says how to go back to the default.
    assert "500 W is in force" in caplog.text and "nvidia-smi -i 0 -pl 700" in caplog.text


def test_a_site_cap_comes_back_after_an_exception(gpu):
    nvml = gpu(limit_mw=SITE_CAP_MW)
    with pytest.raises(FloatingPointError), held_power_limit(ON_GPU0, {"power_limit_fraction": 0.5}):
        raise FloatingPointError("loss became nan")
    assert nvml.set_calls == [("handle0", 350_000), ("handle0", SITE_CAP_MW)]


def test_a_site_cap_comes_back_after_sigterm(gpu):
    nvml = gpu(limit_mw=SITE_CAP_MW)
    limit = held_power_limit(ON_GPU0, {"power_limit_w": 300})
    with pytest.raises(checkpoint.Preempted), checkpoint.exit_on_sigterm(), limit:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this thread before the sleep ends
    assert nvml.limit_mw == SITE_CAP_MW


def test_a_failed_restore_says_how_to_put_the_previous_limit_back(gpu):
    nvml = gpu(limit_mw=SITE_CAP_MW)
    failed = pytest.raises(PowerLimitError, match=r"nvidia-smi -i 0 -pl 500$")
    with failed, held_power_limit(ON_GPU0, {"power_limit_w": 250}):
        nvml.permitted = False  # e.g. the capability dropped, or zeusd went away, mid-run
    assert nvml.limit_mw == 250_000


@pytest.mark.parametrize(
    "variant", [{"power_limit_w": 150}, {"power_limit_w": 800}, {"power_limit_fraction": 0.2}]
)
def test_a_limit_outside_the_allowed_range_is_refused_naming_the_range(gpu, variant):
    nvml = gpu()
    refused = pytest.raises(PowerLimitError, match="outside the range this GPU allows, 200-700 W")
    with refused, held_power_limit(ON_GPU0, variant):
        pytest.fail("the body must not run")
    assert nvml.set_calls == []


def _tiny_inputs(tmp_path, digits_arrays):
    from joulebench.data.splits import describe

    arrays, classes = digits_arrays
    splits, facts = tmp_path / "splits.npz", tmp_path / "dataset.json"
    store.save_arrays(splits, arrays)
    store.write_json(facts, describe(arrays, classes))
    training = {**resolved_config()["training"], "epochs": 1}
    energy = {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725}
    return splits, facts, training, energy


def train_into(out, splits, facts, variant, training, energy) -> dict:
    """train_model's stage on these inputs, its declared outputs under `out`; returns them."""
    outputs = model_files(out)
    train_model({"splits": splits, "facts": facts}, outputs, "small_cnn", variant, training, 0, energy)
    return outputs


def test_without_permission_it_fails_before_training_and_says_what_to_do(
    gpu, monkeypatch, tmp_path, digits_arrays
):
    nvml = gpu(permitted=False)
    monkeypatch.setattr(devices, "accelerator", lambda: ON_GPU0)
    train = mock.MagicMock()
    monkeypatch.setattr(resume, "train", train)
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    variant = {"technique": "power_limit", "power_limit_w": 250}
    with pytest.raises(PowerLimitError) as error:
        train_into(tmp_path / "out", splits, facts, variant, training, energy)
    message = str(error.value)
    assert "run the job as root" in message and "ZEUSD_SOCK_PATH" in message
    train.assert_not_called()
    assert nvml.limit_mw == DEFAULT_MW
    assert not (tmp_path / "out" / "model.pt").exists()


def test_training_under_a_limit_records_it_and_resets_it(gpu, monkeypatch, tmp_path, digits_arrays):
    nvml = gpu()
    monkeypatch.setattr(devices, "accelerator", lambda: ON_GPU0)
    limits_during_training = []
    real_train = resume.train

    def train(*args, **kwargs):
        limits_during_training.append(nvml.limit_mw)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(resume, "train", train)
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    variant = {"technique": "power_limit", "power_limit_fraction": 0.5}
    train_into(tmp_path / "out", splits, facts, variant, training, energy)
    assert limits_during_training == [350_000]
    assert nvml.set_calls == [("handle0", 350_000), ("handle0", DEFAULT_MW)]
    for name in ("training.json", "energy.json"):
        record = store.read_json(tmp_path / "out" / name)
        assert record["power_limit"]["applied_w"] == 350.0, name
        assert record["cpu_threads"] == torch.get_num_threads()
    assert store.read_json(tmp_path / "out" / "energy.json")["gpu"]["metered"] is True


def test_without_a_gpu_the_variant_writes_a_skipped_marker_that_evaluation_passes_on(tmp_path, digits_arrays):
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    out = tmp_path / "out"
    variant = {"technique": "power_limit", "power_limit_w": 250}
    with mock.patch.object(devices, "accelerator", lambda: CPU):
        train_into(out, splits, facts, variant, training, energy)
    for name in ("model.json", "training.json", "energy.json"):
        assert store.read_json(out / name)["skipped"] == "no GPU on this host"
    assert (out / "model.pt").stat().st_size == 0
    files = model_files(out)
    inputs = {"splits": splits, "model": files["model"], "recipe": files["recipe"]}
    metrics = {"metrics": tmp_path / "metrics.json", "energy": tmp_path / "eval.json"}
    evaluate_model(inputs, metrics, resolved_config()["evaluation"], energy)
    assert store.read_json(tmp_path / "metrics.json")["skipped"] == "no GPU on this host"


SEARCH = {
    "technique": "power_limit",
    "optimizer": "global",
    "eta_knob": 0.5,
    "warmup_steps": 1,
    "profile_steps": 2,
    "pl_step_w": 250,  # profiles 700, 450 and 200 W within the first epoch's 18 steps
}


@pytest.fixture
def search_host(gpu, monkeypatch):
    """The MOCK GPU for Zeus's GlobalPowerLimitOptimizer: no CUDA to synchronize, and its atexit
    hook kept out of the test process (it would run after the mocks are gone)."""
    monkeypatch.setattr(zeus.monitor.energy, "sync_execution_fn", mock.MagicMock())
    monkeypatch.setattr(atexit, "register", mock.MagicMock())
    monkeypatch.setattr(devices, "accelerator", lambda: ON_GPU0)
    return gpu


def test_global_search_profiles_the_limits_records_the_choice_and_resets(
    search_host, tmp_path, digits_arrays
):
    nvml = search_host()
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    with mock.patch("zeus.device.common.has_sys_admin", return_value=True):
        train_into(tmp_path / "out", splits, facts, SEARCH, training, energy)
    # Zeus starts at the largest limit (already set: no NVML call), then steps down 250 W at a time.
    assert nvml.set_calls[:2] == [("handle0", 450_000), ("handle0", 200_000)]
    assert nvml.limit_mw == DEFAULT_MW  # reset to the default at the end
    assert nvml.persistence == pynvml.NVML_FEATURE_DISABLED  # turned on by Zeus, put back
    for name in ("training.json", "energy.json"):
        limit = store.read_json(tmp_path / "out" / name)["power_limit"]
        assert limit["optimizer"] == "global" and limit["finished"] is True, name
        assert [p["power_limit_w"] for p in limit["profiled"]] == [700, 450, 200]
        assert limit["chosen_w"] in (700, 450, 200)


def test_global_search_ends_with_the_previous_limit_even_after_zeus_exit_hook(
    search_host, tmp_path, digits_arrays
):
    nvml = search_host(limit_mw=SITE_CAP_MW)
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    # The lowest limit wins, so the optimizer ends away from the largest one its exit hook sets.
    with (
        mock.patch("zeus.device.common.has_sys_admin", return_value=True),
        mock.patch.object(ZeusCost, "select", return_value=200),
    ):
        train_into(tmp_path / "out", splits, facts, SEARCH, training, energy)
    # Zeus starts the search at the largest limit, not at the cap in force.
    assert nvml.set_calls[:3] == [("handle0", 700_000), ("handle0", 450_000), ("handle0", 200_000)]
    assert nvml.limit_mw == SITE_CAP_MW
    hooks = [call.args[0] for call in atexit.register.call_args_list]
    zeus_hooks = [hook for hook in hooks if "GlobalPowerLimitOptimizer" in hook.__qualname__]
    assert zeus_hooks
    for hook in zeus_hooks:
        hook()  # what the process's exit runs: Zeus's hook that would set the largest limit
    assert nvml.limit_mw == SITE_CAP_MW
    limit = store.read_json(tmp_path / "out" / "energy.json")["power_limit"]
    assert limit["previous_w"] == 500.0 and limit["restored_w"] == 500.0
    assert limit["chosen_w"] == 200


def test_global_search_without_privileges_fails_before_training(
    search_host, monkeypatch, tmp_path, digits_arrays
):
    nvml = search_host()
    train = mock.MagicMock()
    monkeypatch.setattr(resume, "train", train)
    splits, facts, training, energy = _tiny_inputs(tmp_path, digits_arrays)
    with (
        mock.patch("zeus.device.common.has_sys_admin", return_value=False),
        pytest.raises(PowerLimitError, match="run the job as root.*ZEUSD_SOCK_PATH"),
    ):
        train_into(tmp_path / "out", splits, facts, SEARCH, training, energy)
    train.assert_not_called()
    assert nvml.set_calls == []
