"""The workflow submitted through profiles/slurm to a real single-node SLURM cluster.

The cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd on localhost) is started by
tests/slurm/cluster_up.sh unless it already runs, and stopped at the end if these tests started it.
Every command runs under `timeout -s KILL`: a SLURM fault must fail a test, never hang CI.

Run them on a Debian machine, as root:

    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server
    python -m pytest tests/slurm/test_slurm.py

Where SLURM is not installed they skip; with CI=true they always run.
"""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, snakemake_command, tiny_config
from joulebench import store
from slurm_profile import profile_for_tests

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_SCRIPTS = ROOT / "tests" / "slurm"
CLUSTER_BASE = Path(os.environ.get("JOULEBENCH_SLURM_BASE", "/tmp/joulebench-slurm"))
SLURM_ENV = {**os.environ, "SLURM_CONF": str(CLUSTER_BASE / "etc" / "slurm.conf")}
HOW_TO_RUN = (
    "SLURM is not installed; to run the SLURM tests (as root, on Debian): apt-get install -y "
    "--no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server && "
    "python -m pytest tests/slurm/test_slurm.py (CI=true makes them mandatory)"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SLURM_INSTALLED = all(shutil.which(tool) for tool in ("sbatch", "slurmctld", "slurmd", "slurmdbd"))

# Hard limits, in seconds. A run of three jobs takes ~1.5 min on an idle 2-core machine and up to
# 7 min on a heavily loaded one; the limits guard against hangs, not slowness.
RUN_LIMIT_S = 600
COMMAND_LIMIT_S = 30
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: .*/slurm_logs/rule_(\w+)/")


def bounded(command: list[str], limit_s: int, **kwargs) -> subprocess.CompletedProcess:
    """Run a command that SIGKILL ends after `limit_s` seconds."""
    kwargs.setdefault("env", SLURM_ENV)
    command = ["timeout", "-s", "KILL", str(limit_s), *command]
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def run_workflow(workdir: Path, config: dict, profile: Path | None, *args: str):
    return bounded(snakemake_command(workdir, config, *args, profile=profile), RUN_LIMIT_S, cwd=workdir)


def submitted_jobs(snakemake_output: str) -> dict[str, str]:
    """SLURM job id -> rule, from Snakemake's "submitted with SLURM jobid" lines."""
    return {job_id: rule for job_id, rule in SUBMITTED.findall(snakemake_output)}


def sacct_rows(job_ids) -> pd.DataFrame:
    fields = "JobID,State,ExitCode,AllocTRES,NodeList"
    result = bounded(["sacct", "-X", "-n", "-P", "-o", fields, "-j", ",".join(job_ids)], COMMAND_LIMIT_S)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.strip().splitlines()]
    return pd.DataFrame(rows, columns=fields.split(",")).set_index("JobID")


def sacct_states_when_settled(job_ids, limit_s: int = 60) -> pd.DataFrame:
    """sacct rows once no job is PENDING or RUNNING any more (slurmdbd records with a short delay)."""
    deadline = time.monotonic() + limit_s
    while True:
        rows = sacct_rows(job_ids)
        settled = len(rows) == len(job_ids) and not rows["State"].isin(["PENDING", "RUNNING"]).any()
        if settled or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def small_config(**overrides) -> dict:
    """The tiny config with the baseline only: three SLURM jobs (prepare, train, evaluate)."""
    config = tiny_config(**overrides)
    config["variants"] = {}
    return config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The local cluster: started here unless already up; stopped at the end if started here.
    Every test here needs it, through this fixture: where SLURM is not installed they skip (the
    module stays importable for profile_for_tests)."""
    if not SLURM_INSTALLED and not IN_CI:
        pytest.skip(HOW_TO_RUN)
    running = (CLUSTER_BASE / "run" / "slurmctld.bgpid").exists() and (
        bounded(["sinfo", "-h"], COMMAND_LIMIT_S).returncode == 0
    )
    # The daemons and /etc/slurm/slurm.conf need root: as another user, passwordless sudo.
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n", "env", f"JOULEBENCH_SLURM_BASE={CLUSTER_BASE}"]
    if not running:
        if as_root and bounded(["sudo", "-n", "true"], COMMAND_LIMIT_S).returncode != 0 and not IN_CI:
            pytest.skip("the SLURM test cluster needs root or passwordless sudo; " + HOW_TO_RUN)
        # Output to a file, not a pipe: a daemon that kept the pipe open would block the read.
        log = tmp_path_factory.mktemp("slurm_cluster") / "cluster_up.log"
        with log.open("w") as output:
            command = ["timeout", "-s", "KILL", "180", *as_root, "bash", str(SLURM_SCRIPTS / "cluster_up.sh")]
            started = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        assert started.returncode == 0, f"cluster_up.sh failed:\n{log.read_text()}"
    yield
    if not running:
        bounded([*as_root, "bash", str(SLURM_SCRIPTS / "cluster_down.sh")], 60)


@pytest.fixture(scope="module")
def profile(cluster, tmp_path_factory):
    return profile_for_tests(tmp_path_factory.mktemp("slurm_profile"))


@pytest.fixture(scope="module")
def slurm_run(profile, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_run")
    result = run_workflow(workdir, small_config(), profile)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"SLURM run failed ({result.returncode}):\n{output[-6000:]}"
    return workdir, output


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local_run")
    result = run_workflow(workdir, small_config(), None)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_every_compute_rule_is_a_completed_slurm_job(slurm_run):
    workdir, output = slurm_run
    jobs = submitted_jobs(output)
    assert {"prepare_dataset", "train_model", "evaluate_model"} <= set(jobs.values()), jobs
    rows = sacct_states_when_settled(list(jobs))
    assert rows.loc[list(jobs), "State"].eq("COMPLETED").all(), rows
    # The report is a localrule: it ran on the submit host, not in the queue.
    assert "aggregate_report" not in jobs.values()
    assert "localrule aggregate_report" in output
    assert (workdir / "results/report/results.csv").stat().st_size > 0


# The jobs of small_config() that compute on a GPU: the float baseline's training, evaluation and
# interleaved comparison (tests/unit/test_gpu_resources.py checks every rule and variant kind).
GPU_RULES = {"train_model", "evaluate_model", "compare_inference"}


def test_gpu_rules_are_scheduled_on_a_gpu(slurm_run):
    """Each job that computes on the GPU asks for one (its rule's `gpu` resource, sbatch
    --gpus=1) and gets it; CPU rules get none.

    MOCK: the cluster's GPUs are fake gres devices (character devices with /dev/null's number,
    see tests/slurm/cluster_up.sh). They are NOT GPUs: this checks scheduling only, and the jobs
    still compute on the CPU (torch finds no CUDA driver).
    """
    _, output = slurm_run
    jobs = submitted_jobs(output)
    assert set(jobs.values()) >= GPU_RULES, jobs
    rows = sacct_states_when_settled(list(jobs))
    for job_id, rule in jobs.items():
        gets_gpu = "gres/gpu=1" in rows.loc[job_id, "AllocTRES"]
        assert gets_gpu == (rule in GPU_RULES), (rule, rows.loc[job_id, "AllocTRES"])


def energy_records(workdir: Path, under: str = "results") -> dict[Path, dict]:
    return {path: store.read_json(path) for path in sorted((workdir / under).rglob("energy.json"))}


def test_energy_records_name_their_slurm_job_node_and_gpu(slurm_run):
    workdir, output = slurm_run
    job_of_rule = {rule: job_id for job_id, rule in submitted_jobs(output).items()}
    node = socket.gethostname().split(".")[0]
    records = energy_records(workdir)
    # Every measured SLURM job left a record (plot_augmentation only draws a figure and measures
    # nothing), and every record names the job that made it.
    assert {record["rule"] for record in records.values()} == set(job_of_rule) - {"plot_augmentation"}
    for path, record in records.items():
        rule = record["rule"]
        assert record["slurm_job_id"] == job_of_rule[rule], path
        assert record["slurm_node"] == node, path
        # MOCK gres: SLURM exports the fake device's index (one of two) as the job's visible GPU.
        assert record["cuda_visible_devices"] in (("0", "1") if rule in GPU_RULES else (None,)), path


def test_report_sums_energy_over_separate_jobs(slurm_run):
    """Each record is one job on one node; the lineage total adds the records, none twice."""
    workdir, output = slurm_run
    row = pd.read_csv(workdir / "results/report/results.csv").set_index("variant").loc["baseline"]
    data = sum(record["joules"] for record in energy_records(workdir, "results/data").values())
    train = store.read_json(workdir / "results/models/digits/small_cnn/baseline/seed0/energy.json")
    assert row["pipeline_energy_j"] == pytest.approx(data + train["joules"])
    assert row["own_energy_j"] == pytest.approx(train["joules"])
    assert str(row["slurm_job_id"]) == train["slurm_job_id"]


def test_outputs_equal_a_local_run(slurm_run, local_run):
    """Same config, same threads, CPU training: the cluster run reproduces the local run exactly."""
    slurm_dir, _ = slurm_run
    model_dir = "results/models/digits/small_cnn/baseline/seed0"
    metrics = "results/eval/digits/small_cnn/baseline/seed0/metrics.json"
    accuracy = [store.read_json(run / metrics)["test_accuracy"] for run in (slurm_dir, local_run)]
    assert accuracy[0] == accuracy[1]
    on_cluster = store.load_tensors(slurm_dir / model_dir / "model.pt")
    local = store.load_tensors(local_run / model_dir / "model.pt")
    assert on_cluster.keys() == local.keys()
    for name, tensor in on_cluster.items():
        assert torch.equal(tensor, local[name]), name


def test_failing_job_is_reported_failed(profile, tmp_path):
    """A job that fails at runtime ends the run with an error naming the rule, within a bound."""
    config = small_config()
    config["dataset"] = {**config["dataset"], "source": "imagefolder", "root": str(tmp_path / "absent")}
    started = time.monotonic()
    result = run_workflow(tmp_path / "work", config, profile)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode not in (0, -9, 137), output[-4000:]
    assert elapsed < RUN_LIMIT_S - 30
    assert "Error in rule prepare_dataset" in output
    assert "does not exist" in output  # the job's own error reached the user (show-failed-logs)
    jobs = submitted_jobs(output)
    assert list(jobs.values()) == ["prepare_dataset"]
    assert sacct_states_when_settled(list(jobs))["State"].eq("FAILED").all()


def wait_for_text(path: Path, pattern: str, deadline: float, process: subprocess.Popen) -> re.Match:
    """Poll a file for a regex until it appears, the process ends, or the deadline passes."""
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and (match := re.search(pattern, path.read_text())):
            return match
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} (process ended: {process.poll() is not None})")


@pytest.mark.parametrize("variant", ["baseline", "ddp2"])
def test_cancelled_training_resumes_from_its_checkpoint(profile, slurm_run, tmp_path, variant):
    """scancel a training job mid-run; the rerun resumes from its last epoch checkpoint. ddp2: a
    2-process data_parallel job, whose workers' srun step SLURM signals too; its resumed job is
    then checked as a data-parallel SLURM job (assert_two_slurm_tasks)."""
    epochs = 7
    config = small_config()
    config["training"]["epochs"] = epochs
    config["variants"] = {"ddp2": {"technique": "data_parallel", "processes": 2}}
    workdir = tmp_path / "work"
    # Reuse the prepared data of the first run: only the training job is under test.
    shutil.copytree(slurm_run[0] / "results" / "data", workdir / "results" / "data")
    model_dir = f"results/models/digits/small_cnn/{variant}/seed0"
    train_log = workdir / f"logs/train_model/digits/small_cnn/{variant}/seed0.log"
    output_path = tmp_path / "first_run.out"
    command = snakemake_command(workdir, config, f"{model_dir}/model.pt", profile=profile)
    deadline = time.monotonic() + RUN_LIMIT_S
    with output_path.open("w") as output:
        first = subprocess.Popen(
            ["timeout", "-s", "KILL", str(RUN_LIMIT_S), *command],
            stdout=output, stderr=subprocess.STDOUT, cwd=workdir, env=SLURM_ENV,
        )  # fmt: skip
    try:
        job_id = wait_for_text(output_path, SUBMITTED.pattern, deadline, first).group(1)
        # Epoch 2 logged: epoch 1's checkpoint is on disk (it is saved before epoch 2 starts).
        wait_for_text(train_log, rf"epoch 2/{epochs} ", deadline, first)
        cancelled = bounded(["scancel", job_id], COMMAND_LIMIT_S)
        assert cancelled.returncode == 0, cancelled.stderr
        first_returncode = first.wait(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    first_output = output_path.read_text()
    assert first_returncode not in (0, -9, 137), first_output[-4000:]
    assert sacct_states_when_settled([job_id]).loc[job_id, "State"].startswith("CANCELLED")
    assert not (workdir / model_dir / "model.pt").exists()

    rerun = run_workflow(workdir, config, profile, f"{model_dir}/model.pt")
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-6000:]
    log = train_log.read_text()
    assert re.search(r"resum", log, re.IGNORECASE), log
    assert not re.search(r"epoch 1/", log.split("esum", 1)[1]), "the rerun trained epoch 1 again"
    history = pd.read_csv(workdir / model_dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, epochs + 1))
    assert store.read_json(workdir / model_dir / "training.json")["resumed_after_epoch"] >= 1
    if variant == "ddp2":  # the resumed job is a complete data-parallel job
        (rerun_job,) = (
            job for job, rule in submitted_jobs(rerun.stdout + rerun.stderr).items() if rule == "train_model"
        )
        assert_two_slurm_tasks(workdir, model_dir, rerun_job)


def assert_two_slurm_tasks(workdir: Path, model_dir: str, job_id: str) -> None:
    """A data_parallel variant's train_model job got 2 SLURM tasks and 2 GPUs, one per process,
    from the shipped profile unedited, and ran its workers with srun; every worker saw both GPUs
    (MOCK: the fake gres devices of tests/slurm/cluster_up.sh, so they still train on the CPU with
    gloo); one rank measured the node, and the record of the resumed job names the job, the node
    and both ranks."""
    row = sacct_states_when_settled([job_id]).loc[job_id]
    assert row["State"] == "COMPLETED"
    assert "gres/gpu=2" in row["AllocTRES"], row["AllocTRES"]
    # The workers' step: two tasks of the same allocation, started by srun inside the job.
    steps = bounded(["sacct", "-n", "-P", "-o", "JobID,NTasks", "-j", job_id], COMMAND_LIMIT_S)
    tasks = re.findall(r"^\S+\|(\d*)$", steps.stdout, re.M)
    assert any(int(count or 0) == 2 for count in tasks), steps.stdout
    record = store.read_json(workdir / model_dir / "energy.json")
    assert record["slurm_job_id"] == job_id
    assert record["data_parallel"]["world_size"] == 2
    (node,) = record["nodes"]
    assert node["host"] == socket.gethostname() and node["measured_by_rank"] == 0 and node["ranks"] == [0, 1]
    # `nodes` describe this attempt; the totals add the checkpointed epochs of the cancelled one.
    assert record["estimate"]["cpu_seconds"] > sum(node["cpu_seconds_by_rank"].values()) > 0
    log = (workdir / "logs/train_model/digits/small_cnn/ddp2/seed0.log").read_text()
    assert "srun" in log and "rank1" in log, log[-3000:]
    for rank in range(2):
        assert re.search(rf"rank {rank} of 2 on \S+ \(cpu, CUDA_VISIBLE_DEVICES=0,1\)", log), log[-3000:]
    assert record["cuda_visible_devices"] == "0,1"
