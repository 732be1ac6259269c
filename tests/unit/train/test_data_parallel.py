"""Data-parallel training (technique data_parallel): real torchrun, real gloo, and energy counted
once per node, never once per rank."""

import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pynvml
import pytest
import torch
import yaml

from conftest import ROOT, artifact, model_files, run_snakemake, tiny_config
from joulebench import store
from joulebench.config import ConfigError, check_config, resolved_config
from joulebench.data import sources, splits
from joulebench.models import build_model
from joulebench.saved import load_model
from joulebench.train.checkpoint import file_digest
from joulebench.train.data_parallel import combine_windows, launch_training, shard_arrays
from joulebench.train.distributed import launch_command
from simulated_host.nvml import autospec_pynvml

PROCESSES = 2


def test_shards_are_equal_and_cover_the_split():
    arrays = {"train_x": np.arange(7), "train_y": np.arange(7), "val_x": np.arange(3)}
    shards = [shard_arrays(arrays, rank, 2) for rank in range(2)]
    # 7 images over 2 ranks: 4 each (one wraps around), so both take the same number of steps.
    assert [len(s["train_y"]) for s in shards] == [4, 4]
    assert set(np.concatenate([s["train_y"] for s in shards])) == set(range(7))
    assert all(np.array_equal(s["val_x"], arrays["val_x"]) for s in shards)


def _node_window(host: str, joules: dict, cpu_seconds: float, ranks: list[int], others_on_gpu=()) -> dict:
    """One node's record of a window, as its measuring rank (the first of `ranks`) writes it."""
    parts = [{"part": name, "joules": value, "source": "rapl"} for name, value in joules.items()]
    devices = {
        name: {"joules": v, "source": "rapl", "name": name, "device_id": name} for name, v in joules.items()
    }
    estimate = {"cpu_seconds": cpu_seconds, "joules": 1.0, "cpu_joules": 1.0, "memory_joules": 0.0}
    return {
        "window": "epoch1",
        "start_unix": 100.0,
        "end_unix": 110.0,
        "wall_time_s": 10.0,
        "measured": True,
        "joules": sum(joules.values()),
        "measured_joules": sum(joules.values()),
        "estimated_joules": 0.0,
        "source": "rapl",
        "parts": parts,
        "short_window": False,
        "other_processes_cpu_share": 0.0,
        "busy_host": False,
        "other_gpu_processes": list(others_on_gpu),
        "busy_gpu": bool(others_on_gpu),
        "devices": devices,
        "estimate": {**estimate, "gpu_joules": None},
        "node": {"host": host, "measured_by_rank": ranks[0], "ranks": ranks},
    }


def test_node_records_are_summed_once_with_their_host():
    one = combine_windows([_node_window("a", {"cpu0": 50.0}, 20.0, [0, 1])])
    assert one["joules"] == 50.0 and list(one["devices"]) == ["cpu0"]
    nodes = [_node_window("a", {"cpu0": 50.0}, 20.0, [0, 1]), _node_window("b", {"cpu0": 30.0}, 10.0, [2, 3])]
    two = combine_windows(nodes)
    assert two["joules"] == 80.0
    assert sorted(two["devices"]) == ["a/cpu0", "b/cpu0"]
    assert sum(part["joules"] for part in two["parts"]) == 80.0
    assert two["estimate"]["cpu_seconds"] == 30.0
    measured = [(n["host"], n["measured_by_rank"], n["joules"]) for n in two["nodes"]]
    assert measured == [("a", 0, 50.0), ("b", 2, 30.0)]


def test_another_process_on_one_nodes_gpu_flags_the_combined_window_naming_the_node():
    stranger = {"device": "gpu0", "pid": 77, "used_gpu_memory_mib": 100.0}
    nodes = [
        _node_window("a", {"cpu0": 5.0}, 1.0, [0]),
        _node_window("b", {"cpu0": 5.0}, 1.0, [1], [stranger]),
    ]
    combined = combine_windows(nodes)
    assert combined["busy_gpu"] is True
    assert combined["other_gpu_processes"] == [{**stranger, "device": "b/gpu0"}]
    unknown = _node_window("a", {"cpu0": 5.0}, 1.0, [0]) | {"other_gpu_processes": None}
    assert combine_windows([unknown, nodes[1]])["other_gpu_processes"] is None


def test_launcher_uses_torchrun_outside_slurm_and_srun_inside():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    command, _ = launch_command(2, 1, ["{}"], env)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=2" in command
    inside = {**env, "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}
    command, srun_env = launch_command(2, 1, ["{}"], inside)
    assert command[0] == "srun" and "--ntasks=2" in command
    # The step we run in must not impose its geometry on the workers' step.
    assert "SLURM_NTASKS" not in srun_env and srun_env["SLURM_JOB_ID"] == "7"
    assert int(srun_env["MASTER_PORT"]) > 0


def test_batch_size_must_split_over_the_processes():
    config = tiny_config()
    config["variants"] = {"ddp3": {"technique": "data_parallel", "processes": 3}}
    with pytest.raises(ConfigError, match="variants.ddp3.processes"):
        check_config(resolved_config(config))


def resolved_resources(workdir, config, profile, *targets) -> dict:
    """train_model's resources per variant as Snakemake resolves them under `profile` (the rule's
    functions, then the profile's set-resources over them), from a dry run's job listing."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n", *targets,
        "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
        "--workflow-profile", str(profile),
    ]  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # A listing without `threads:` (no --cores given) is a job of one thread.
    listing = r"rule train_model:.*?variant=(\w+),.*?\n\s+(?:threads: (\d+)\n\s+)?resources: ([^\n]*)"
    jobs = re.findall(listing, result.stdout, re.S)
    resolved = {}
    for variant, threads, line in jobs:
        pairs = (item.split("=", 1) for item in line.split(", "))
        resources = {key: int(value) if value.isdigit() else value for key, value in pairs}
        resolved[variant] = SimpleNamespace(threads=int(threads or 1), resources=_Resources(resources))
    return resolved


class _Resources(dict):
    """Snakemake's job.resources as the plugin reads it: `.get()` and attribute access."""

    __getattr__ = dict.__getitem__


@pytest.mark.slow  # two Snakemake dry runs: ~15 s
def test_slurm_jobs_ask_one_gpu_and_one_task_per_process(tmp_path):
    """The sbatch arguments snakemake-executor-plugin-slurm's own code (2.8.0: get_submit_command,
    set_gres_string) builds for train_model under the shipped profiles/slurm: a 2-process variant
    gets 2 GPUs and one task per GPU, the baseline one GPU and one task, with no profile edit."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = tiny_config()
    config["variants"] = {"ddp2": {"technique": "data_parallel", "processes": PROCESSES}}
    targets = [f"results/models/digits/small_cnn/{v}/seed0/model.pt" for v in ("baseline", "ddp2")]
    jobs = resolved_resources(tmp_path, config, ROOT / "profiles" / "slurm", *targets)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="", partition="", workdir="")

    def sbatch(job) -> list[str]:
        return (get_submit_command(job, params) + set_gres_string(job)).split()

    ddp, baseline = sbatch(jobs["ddp2"]), sbatch(jobs["baseline"])
    # --gpus=2 --ntasks-per-gpu=1: two tasks, each with its own GPU (NCCL), threads / 2 CPUs each.
    assert {"--gpus=2", "--ntasks-per-gpu=1", "--cpus-per-task=1"} <= set(ddp), ddp
    assert not any(arg.startswith(("--ntasks=", "--gres")) for arg in ddp), ddp
    assert {"--gpus=1", "--cpus-per-task=2"} <= set(baseline), baseline
    assert not any(arg.startswith(("--ntasks", "--gres")) for arg in baseline), baseline
    # Locally (profiles/default) a data_parallel job still holds the one `gpu` slot.
    local = resolved_resources(tmp_path / "local", config, ROOT / "profiles" / "default", targets[1])
    assert local["ddp2"].resources["gpu"] == 1


def run_spec(folder, out, epochs: int, checkpoint=None) -> dict:
    """What train_model hands its workers: the declared files, the resolved settings, the
    checkpoint path (None: no checkpoints) and the data it fingerprints."""
    training = {**resolved_config()["training"], "epochs": epochs, "batch_size": 64}
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "data_facts": {"splits": file_digest(folder / "splits.npz")},
        "inputs": {"splits": str(folder / "splits.npz"), "facts": str(folder / "dataset.json")},
        "outputs": {key: str(path) for key, path in model_files(out).items()},
        "model": "small_cnn",
        "training": training,
        "seed": 0,
        "estimate": {"power_per_core_w": 12.0, "memory_w_per_gb": 0.3725},
        "transforms": [],
    }


def _launch(spec: dict) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(PROCESSES)  # the job's threads: one per process
    try:
        launch_training(spec, PROCESSES)
    finally:
        torch.set_num_threads(threads)


def _train_two_processes(folder):
    images, labels, classes = sources.load_digits_source()
    arrays = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
    store.save_arrays(folder / "splits.npz", arrays)
    store.write_json(folder / "dataset.json", splits.describe(arrays, classes))
    _launch(run_spec(folder, folder / "out", epochs=2))
    return folder / "out", len(arrays["train_y"])


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A real 2-process gloo training through torchrun, on the digits."""
    return _train_two_processes(tmp_path_factory.mktemp("data_parallel"))


def test_two_processes_train_a_model_a_single_process_can_load(two_process_run):
    out, _ = two_process_run
    model, recipe = load_model(*artifact(out))  # the unwrapped module's state dict: no "module." prefix
    assert store.load_tensors(out / "model.pt").keys() == build_model(recipe).state_dict().keys()
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["val_accuracy"].iloc[-1] > 0.8
    training = store.read_json(out / "training.json")
    assert training["data_parallel"] == {"processes": 2, "backend": "gloo", "per_process_batch_size": 32}
    assert training["batch_size"] == 64
    # Each rank trains under the recipe's numeric flags; both records say which.
    assert training["numerics"]["deterministic_algorithms_warn_only"] is True
    assert store.read_json(out / "energy.json")["numerics"] == training["numerics"]


def test_energy_is_counted_once_per_node_not_once_per_rank(two_process_run):
    """One rank (LOCAL_RANK 0) measured the node; the estimate charges both ranks' CPU time once.

    Counted once per rank, the CPU seconds would be twice what both ranks used together, and more
    than the two cores of this host can give in the window's wall time.
    """
    out, _ = two_process_run
    record = store.read_json(out / "energy.json")
    assert record["data_parallel"]["world_size"] == 2
    assert len(record["nodes"]) == 1
    node = record["nodes"][0]
    assert node["measured_by_rank"] == 0 and node["ranks"] == [0, 1]
    by_rank = node["cpu_seconds_by_rank"]
    assert set(by_rank) == {"0", "1"} and all(seconds > 0 for seconds in by_rank.values())
    # The rule's estimate charges the sum of the ranks' CPU time, once.
    assert record["estimate"]["cpu_seconds"] == pytest.approx(sum(by_rank.values()))
    assert record["estimate"]["cpu_joules"] == pytest.approx(12.0 * sum(by_rank.values()))
    assert record["joules"] == pytest.approx(sum(part["joules"] for part in record["parts"]))
    assert record["joules"] == pytest.approx(node["joules"])
    # Physically possible: no more CPU time than the host's cores had in the window (+10% slack
    # for the window's edges); counting each rank's share twice would break it.
    assert record["estimate"]["cpu_seconds"] <= 1.1 * record["wall_time_s"] * os.cpu_count()
    # Each epoch's window is one node record too, and the history's joules are those windows.
    history = pd.read_csv(out / "history.csv")
    for window, joules in zip(record["windows"], history["joules"], strict=True):
        assert len(window["nodes"]) == 1 and window["joules"] == pytest.approx(joules)
        by_rank = window["nodes"][0]["cpu_seconds_by_rank"]
        assert window["estimate"]["cpu_seconds"] == pytest.approx(sum(by_rank.values()))
        # The host-speed probe ran once, before the rule's window (and before the ranks met).
        assert window["host_speed"] == record["host_speed"] > 0
        assert window["host_speed_probed_before"] == record["host_speed_probed_before"]
    assert record["host_speed_probed_before"].startswith("rule:")


@pytest.mark.slow
def test_workflow_trains_a_data_parallel_variant(tmp_path):
    """train_model of a data_parallel variant starts its workers through torchrun; the report has it."""
    config = tiny_config()
    config["variants"] = {"ddp2": {"technique": "data_parallel", "processes": PROCESSES}}
    config["augmentation"] = {"transforms": []}
    run_snakemake(tmp_path, config)
    model_dir = tmp_path / "results/models/digits/small_cnn/ddp2/seed0"
    record = store.read_json(model_dir / "energy.json")
    assert record["rule"] == "train_model" and record["nodes"][0]["measured_by_rank"] == 0
    log = (tmp_path / "logs/train_model/digits/small_cnn/ddp2/seed0.log").read_text()
    assert "torch.distributed.run" in log and "rank1" in log
    results = pd.read_csv(tmp_path / "results/report/results.csv").set_index("variant")
    assert results.loc["ddp2", "own_energy_j"] == pytest.approx(record["joules"])


@pytest.mark.slow
def test_a_package_counter_is_read_once_per_node(tmp_path, monkeypatch):
    """On a SIMULATED RAPL host (tests/support/simulated_host) the 2-process record holds the CPU package
    once, and its joules follow the power model of one package for both ranks' work: had each rank
    metered the package, the sum would be about twice the model."""
    from simulated_run import (
        DRAM_W,
        PACKAGE_BUSY_W,
        PACKAGE_IDLE_W,
        expected_package_joules,
        simulated_host,
        writer_gap_s,
    )

    host = tmp_path / "host"
    host.mkdir()
    with simulated_host(host) as variables:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        out, _ = _train_two_processes(tmp_path / "run")
    record = store.read_json(out / "energy.json")
    assert record["source"] == "rapl+rapl-dram" and record["measured"] is True
    assert sorted(record["devices"]) == ["cpu0", "dram0"]
    assert record["nodes"][0]["measured_by_rank"] == 0
    assert sorted(record["nodes"][0]["devices"]) == ["cpu0", "dram0"]
    gap = writer_gap_s(host)
    edge = 2 * gap * (PACKAGE_IDLE_W + PACKAGE_BUSY_W)
    for window in [record, *record["windows"]]:
        package = window["devices"]["cpu0"]["joules"]
        assert package == pytest.approx(expected_package_joules(window), rel=0.1, abs=edge), window["window"]
        assert window["devices"]["dram0"]["joules"] == pytest.approx(
            DRAM_W * window["wall_time_s"], rel=0.1, abs=2 * gap * DRAM_W
        )


LAUNCH = """
import json, sys
import torch
from joulebench.train.data_parallel import launch_training
sys.stderr = open(sys.argv[2], "w", buffering=1)
torch.set_num_threads(2)
launch_training(json.loads(sys.argv[1]), 2)
"""


def _start_job(spec: dict, log) -> subprocess.Popen:
    """The train_model job of `spec` as its own process (the launcher, torchrun, the workers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(spec), str(log)], env=env)


@pytest.mark.slow
def test_a_terminated_job_stops_its_workers_and_leaves_no_outputs(tmp_path, two_process_run):
    """SIGTERM to the train_model job (scancel, Snakemake stopping) mid-training: the workers are
    stopped with it, no output, whole or half-written, is left, and the last epoch's checkpoint is
    complete, with no temp file beside it."""
    import psutil

    out, _ = two_process_run
    folder = out.parent
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    spec = run_spec(folder, tmp_path / "out", epochs=200, checkpoint=checkpoint)
    log = tmp_path / "train.log"
    job = _start_job(spec, log)
    deadline = time.monotonic() + 180
    # Epoch 2 logged: epoch 1's checkpoint is on disk (it is saved before epoch 2 starts).
    while "epoch 2/200" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and job.poll() is None, log.read_text()
        time.sleep(0.2)
    # torchrun's agent and the workers it started.
    processes = psutil.Process(job.pid).children(recursive=True)
    workers = [
        p for p in processes if "joulebench.train.data_parallel" in p.cmdline() and p.name() != "pt_elastic"
    ]
    assert len(workers) == PROCESSES
    job.terminate()
    assert job.wait(timeout=60) == 143  # joulebench.train.checkpoint.SIGTERM_EXIT_STATUS
    gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, alive
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert [path.name for path in checkpoint.parent.iterdir()] == ["last.pt"]
    assert store.load_tensors(checkpoint)["epoch"] >= 1


def _kill_job_after_first_checkpoint(job: subprocess.Popen, checkpoint, log) -> None:
    """SIGKILL the whole job, the way SLURM ends a job's cgroup: the launcher, torchrun's agent and
    every worker at once (torchrun starts its workers in their own sessions, so not by group)."""
    import psutil

    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert time.monotonic() < deadline and job.poll() is None, log.read_text() if log.exists() else ""
        time.sleep(0.02)
    tree = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in tree:
        process.kill()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, alive
    job.wait()


def assert_same_weights(dir_a, dir_b) -> None:
    a, b = store.load_tensors(dir_a / "model.pt"), store.load_tensors(dir_b / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_killed_job_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, two_process_run):
    """2 gloo processes on the CPU, SIGKILLed after an epoch's checkpoint: the rerun resumes from
    it on both ranks and ends with the weights and history of an uninterrupted 2-process run."""
    out, _ = two_process_run
    folder, epochs = out.parent, 4
    reference_checkpoint = tmp_path / "reference.pt"
    _launch(run_spec(folder, tmp_path / "reference", epochs, reference_checkpoint))
    assert not reference_checkpoint.exists(), "the checkpoint is removed once the outputs are written"

    checkpoint = tmp_path / "checkpoints" / "last.pt"
    spec = run_spec(folder, tmp_path / "resumed", epochs, checkpoint)
    log = tmp_path / "killed.log"
    _kill_job_after_first_checkpoint(_start_job(spec, log), checkpoint, log)
    assert checkpoint.exists() and not (tmp_path / "resumed" / "model.pt").exists()
    state = torch.load(checkpoint, weights_only=True)  # plain tensors and containers
    killed_after = state["epoch"]
    assert 1 <= killed_after < epochs
    assert len(state["rng"]) == PROCESSES, "every rank's RNG states"

    _launch(spec)
    resumed = tmp_path / "resumed"
    assert not checkpoint.exists()
    assert_same_weights(tmp_path / "reference", resumed)
    learned = ["epoch", "train_loss", "train_accuracy", "val_accuracy"]
    pd.testing.assert_frame_equal(
        pd.read_csv(resumed / "history.csv")[learned],
        pd.read_csv(tmp_path / "reference/history.csv")[learned],
    )
    assert store.read_json(resumed / "training.json")["resumed_after_epoch"] == killed_after
    assert store.read_json(tmp_path / "reference/training.json")["resumed_after_epoch"] is None
    # Energy and seconds: every epoch once, the earlier attempt's from the checkpoint.
    record = store.read_json(resumed / "energy.json")
    assert [w["window"] for w in record["windows"]] == [f"epoch{n}" for n in range(1, epochs + 1)]
    assert record["resumed"]["after_epoch"] == killed_after
    prior = record["windows"][:killed_after]
    assert record["resumed"]["prior_epochs_joules"] == pytest.approx(sum(w["joules"] for w in prior))
    assert record["joules"] >= sum(w["joules"] for w in record["windows"]) * 0.999
    history = pd.read_csv(resumed / "history.csv")
    assert history["cumulative_joules"].iloc[-1] == pytest.approx(history["joules"].sum())


@pytest.mark.slow
def test_a_data_parallel_run_refuses_a_foreign_checkpoint(tmp_path, two_process_run):
    """A checkpoint of another run (here: 1 epoch more, another fingerprint) stops every rank."""
    out, _ = two_process_run
    folder = out.parent
    checkpoint = tmp_path / "last.pt"
    log = tmp_path / "killed.log"
    _kill_job_after_first_checkpoint(
        _start_job(run_spec(folder, tmp_path / "a", 5, checkpoint), log), checkpoint, log
    )
    other = _start_job(run_spec(folder, tmp_path / "b", 4, checkpoint), tmp_path / "refused.log")
    assert other.wait(timeout=180) != 0
    refused = (tmp_path / "refused.log").read_text()
    assert refused.count(f"ForeignCheckpointError: checkpoint {checkpoint}") >= PROCESSES, refused[-3000:]
    assert f"rm {checkpoint}" in refused
    assert checkpoint.exists(), "a refused checkpoint is left for the user to inspect"


# -- which GPUs a node meters (MOCK NVML, a real ZeusMonitor, as tests/unit/energy/test_energy.py does) ---


class MockNode:
    """MOCK of an 8-GPU node's NVML: every GPU draws `watts` all the time (its energy counter, in
    whole mJ, advances with wall time), busy with this job's ranks or idle or another user's."""

    def __init__(self, gpus: int, watts: float):
        self.started, self.watts = time.time(), watts
        self.module = nvml = autospec_pynvml()
        nvml.nvmlDeviceGetCount.return_value = gpus
        nvml.nvmlDeviceGetArchitecture.return_value = pynvml.NVML_DEVICE_ARCH_HOPPER
        nvml.nvmlDeviceGetName.return_value = "NVIDIA H200 (MOCK)"
        nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = self.counter_mj
        power = SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, value=SimpleNamespace(uiVal=watts * 1000))
        nvml.nvmlDeviceGetFieldValues.return_value = [power]

    def counter_mj(self, handle) -> int:
        return int(1_000_000 + self.watts * (time.time() - self.started) * 1000)


def sibling_of(value):
    """What the other rank of a 2-rank node hands to an all_gather where rank 0 hands `value`:
    its (host, rank, local rank, GPU) one higher, its CPU use, and no record (it meters nothing)."""
    if isinstance(value, tuple):
        return tuple(item + 1 if isinstance(item, int) else item for item in value)
    if isinstance(value, dict) and "cpu_seconds" in value and "window" not in value:
        return {**value, "rank": value["rank"] + 1}
    return None


@pytest.fixture
def node_of_8_gpus(monkeypatch):
    """MOCK: an 8-GPU node (NVML and CUDA's device count) and a 2-rank job on it, rank 0 here;
    the collectives answer for rank 1 (sibling_of)."""
    import zeus.device.cpu
    import zeus.device.cpu.rapl
    import zeus.device.gpu
    import zeus.monitor.energy
    from zeus.device.gpu import nvidia

    from joulebench.energy import meter as energy
    from joulebench.train import data_parallel

    node = MockNode(gpus=8, watts=70.0)
    zeus.device.gpu._gpus = None
    zeus.device.cpu._cpus = None
    zeus.device.cpu.rapl.rapl_is_available.cache_clear()
    monkeypatch.setattr(nvidia, "pynvml", node.module)
    monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
    monkeypatch.setattr(zeus.monitor.energy, "sync_execution_fn", mock.MagicMock())
    monkeypatch.setattr(energy, "NVML_COUNTER_PERIOD_S", 0.0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(data_parallel, "_gather", lambda value: [value, sibling_of(value)])
    monkeypatch.setattr(data_parallel.dist, "barrier", lambda: None)
    yield node
    zeus.device.gpu._gpus = None
    zeus.device.cpu._cpus = None
    zeus.device.cpu.rapl.rapl_is_available.cache_clear()


def test_a_node_meters_the_gpus_of_its_ranks_and_no_other(node_of_8_gpus):
    from joulebench.devices import Placement
    from joulebench.energy.estimate import EstimateModel
    from joulebench.train.data_parallel import DataParallelMeter
    from joulebench.train.distributed import Rank

    # Rank 0 computes on GPU 0, rank 1 on GPU 1; GPUs 2-7 are idle or another user's.
    rank = Rank(rank=0, world_size=2, local_rank=0, host="node-a")
    on_gpu0 = Placement(torch.device("cpu"), 0)  # no CUDA here: tensors stay on the CPU
    with DataParallelMeter("train_model", EstimateModel(), rank, on_gpu0) as meter, meter.window("epoch1"):
        time.sleep(0.3)
    record = meter.record()
    assert sorted(record["devices"]) == ["gpu0", "gpu1"]
    gpu_joules = sum(part["joules"] for part in record["parts"] if part["part"].startswith("gpu"))
    assert gpu_joules / record["wall_time_s"] == pytest.approx(2 * 70.0, rel=0.05)  # not 8 x 70 W
    assert record["nodes"][0]["ranks"] == [0, 1]
