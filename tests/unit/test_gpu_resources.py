"""Every job that computes on a GPU asks for one, locally and under SLURM; CPU jobs ask for none.

Read from a real dry-run (`snakemake -n`, which prints each job's resources) on the default
profile and on the SLURM test profile. The SLURM jobs' sbatch lines are then built by the
installed snakemake-executor-plugin-slurm from those resources, the way it submits them.
"""

import re

import pytest
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

from conftest import run_snakemake, tiny_config
from slurm_profile import profile_for_tests

# One variant of every kind that decides where a job computes (each subpackage's stages module places each
# stage): float and int8 models, post-training and QAT quantization, sampling with and without a
# proxy run, data parallelism, and lineages pinned to the CPU.
VARIANTS = {
    "fp16": {"technique": "precision", "precision": "fp16"},
    "prune80": {"technique": "prune", "sparsity": 0.8, "finetune_epochs": 1},
    "distill_w8": {"technique": "distill", "student_width": 8, "temperature": 4.0, "alpha": 0.7},
    "int8_dynamic": {"technique": "quantize", "method": "int8_dynamic"},
    "int8_static": {"technique": "quantize", "method": "int8_static"},
    "qat": {"technique": "quantize", "method": "int8_qat", "finetune_epochs": 1},
    "el2n50": {"technique": "subset", "fraction": 0.5, "method": "el2n", "proxy_epochs": 1},
    "random50": {"technique": "subset", "fraction": 0.5, "method": "random"},
    "ddp2": {"technique": "data_parallel", "processes": 2},
    "cpu": {"technique": "device", "device": "cpu"},
    "el2n50_cpu": {
        "technique": "subset",
        "fraction": 0.5,
        "method": "el2n",
        "proxy_epochs": 1,
        "device": "cpu",
    },
    "prune80_cpu": {"technique": "prune", "sparsity": 0.8, "finetune_epochs": 1, "from": "cpu"},
    "distill_cpu": {
        "technique": "distill",
        "student_width": 8,
        "temperature": 4.0,
        "alpha": 0.7,
        "from": "cpu",
    },
    "qat_cpu": {"technique": "quantize", "method": "int8_qat", "finetune_epochs": 1, "from": "cpu"},
}
FLOAT_ON_GPU = ("baseline", "fp16", "prune80", "distill_w8", "el2n50", "random50", "ddp2")

# (rule, variant) -> GPUs its job computes on; every other job computes on the CPU only.
GPU_JOBS = {
    ("measure_idle_power", None): 1,
    ("compare_inference", None): 1,
    **{("train_model", variant): 1 for variant in ("baseline", "fp16", "el2n50", "random50")},
    ("train_model", "ddp2"): 2,
    ("prune_model", "prune80"): 1,
    ("distill_model", "distill_w8"): 1,
    ("quantize_model", "qat"): 1,
    ("sample_dataset", "el2n50"): 1,
    **{("evaluate_model", variant): 1 for variant in FLOAT_ON_GPU},
}
CPU_JOBS = {
    ("train_model", "cpu"),
    ("train_model", "el2n50_cpu"),
    ("sample_dataset", "el2n50_cpu"),
    ("sample_dataset", "random50"),
    ("prune_model", "prune80_cpu"),
    ("distill_model", "distill_cpu"),
    ("quantize_model", "int8_dynamic"),
    ("quantize_model", "int8_static"),
    ("quantize_model", "qat_cpu"),
    ("prepare_dataset", None),
    ("clean_dataset", None),
    ("plot_augmentation", None),
    ("aggregate_report", None),  # under SLURM a localrule, run on the submit host
    *(("evaluate_model", v) for v in ("int8_dynamic", "int8_static", "qat", "qat_cpu", "cpu", "el2n50_cpu")),
    *(("evaluate_model", v) for v in ("prune80_cpu", "distill_cpu")),
}


def resources_config() -> dict:
    config = tiny_config()
    config["variants"] = VARIANTS
    config["energy"]["idle_baseline_seconds"] = 1  # a measure_idle_power job, whatever the host
    return config


def parse_value(value: str):
    return int(value) if value.isdigit() else value


def dry_run_jobs(output: str) -> dict:
    """(rule, variant) -> {threads, resources} of each job a dry-run lists."""
    jobs = {}
    for block in re.split(r"\n(?=\[)", output):
        rule = re.search(r"^rule (\w+):$", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        variant = re.search(r"^\s+wildcards: .*\bvariant=(\w+)", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        key = (rule.group(1), variant.group(1) if variant else None)
        jobs[key] = {
            "threads": int(threads.group(1)) if threads else 1,
            "resources": {
                k: parse_value(v) for k, v in (item.split("=", 1) for item in resources.split(", "))
            },
        }
    return jobs


@pytest.fixture(scope="module")
def local_jobs(tmp_path_factory):
    """The dry-run's jobs on profiles/default (loaded as the workflow profile)."""
    result = run_snakemake(tmp_path_factory.mktemp("local"), resources_config(), "--dry-run")
    return dry_run_jobs(result.stdout)


@pytest.fixture(scope="module")
def slurm_jobs(tmp_path_factory):
    """The dry-run's jobs on profiles/slurm with the test cluster's keys (tests/slurm/profile)."""
    profile = profile_for_tests(tmp_path_factory.mktemp("slurm_profile"))
    workdir = tmp_path_factory.mktemp("slurm")
    result = run_snakemake(workdir, resources_config(), "--dry-run", "--workflow-profile", str(profile))
    return dry_run_jobs(result.stdout)


def test_the_dry_run_lists_every_job_of_the_table(local_jobs, slurm_jobs):
    assert set(local_jobs) == set(GPU_JOBS) | CPU_JOBS
    assert set(slurm_jobs) == set(GPU_JOBS) | CPU_JOBS


def test_every_local_gpu_job_takes_the_one_gpu_slot_and_cpu_jobs_none(local_jobs):
    """profiles/default's `gpu: 1` then means no two GPU jobs share the device; a data_parallel
    job's request is capped at that one slot."""
    for key, job in local_jobs.items():
        expected = 1 if key in GPU_JOBS else 0
        assert job["resources"].get("gpu", 0) == expected, (key, job["resources"])


class SubmittedJob:
    """What the SLURM plugin reads of a job to build its sbatch line: threads and resources."""

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def __init__(self, job: dict):
        self.threads = job["threads"]
        self.resources = self.Resources(job["resources"])


def sbatch_line(job: dict) -> str:
    """The sbatch line the plugin submits a job with (run uuid, log and comment are placeholders)."""
    submitted = SubmittedJob(job)
    params = {
        "run_uuid": "run",
        "slurm_logfile": "log",
        "comment_str": "rule",
        "account": f"-A {submitted.resources['slurm_account']}",
        "partition": f"-p {submitted.resources['slurm_partition']}",
        "workdir": None,
    }
    return get_submit_command(submitted, params) + set_gres_string(submitted)


def test_every_slurm_gpu_job_asks_sbatch_for_its_gpus_and_cpu_jobs_for_none(slurm_jobs):
    for key, job in slurm_jobs.items():
        line = sbatch_line(job)
        gpus = re.findall(r"--gpus=(\S+)", line)
        assert gpus == ([str(GPU_JOBS[key])] if key in GPU_JOBS else []), (key, line)
    ddp = sbatch_line(slurm_jobs[("train_model", "ddp2")])
    assert "--ntasks-per-gpu=1" in ddp and "--cpus-per-task=1" in ddp, ddp
