"""The SIMULATED GPU + RAPL host's power model and the environment that switches it on, for tests."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT

SIMULATED_HOST = ROOT / "tests" / "support" / "simulated_host"
GPU_IDLE_W, GPU_BUSY_W = 60.0, 240.0
PACKAGE_IDLE_W, PACKAGE_BUSY_W, DRAM_W = 20.0, 40.0, 5.0
# Each counter is read at both window edges; between updates it stands still.
NVML_PERIOD_S, RAPL_WRITER_PERIOD_S = 0.1, 0.01
CPU_ONLY_RULES = {"prepare_dataset", "clean_dataset", "quantize_model"}
# Rules that compute where the variant's model lives (int8 models and CPU-pinned variants: the CPU).
PINNABLE_RULES = {"train_model", "evaluate_model"}


def expected_gpu_joules(record: dict) -> float:
    cores = os.cpu_count() or 1
    return GPU_IDLE_W * record["wall_time_s"] + GPU_BUSY_W * record["estimate"]["cpu_seconds"] / cores


def expected_package_joules(record: dict) -> float:
    cores = os.cpu_count() or 1
    host_busy = (
        record["estimate"]["cpu_seconds"]
        + record["other_processes_cpu_share"] * record["wall_time_s"] * cores
    )
    return PACKAGE_IDLE_W * record["wall_time_s"] + PACKAGE_BUSY_W * host_busy / cores


def writer_gap_s(host: Path) -> float:
    """The longest the simulated RAPL counters stood still in this run: the writer's period, or
    longer where it woke late on a loaded host. At each window edge a reading may lag by that."""
    gap = host / "longest_period_s"
    return max(RAPL_WRITER_PERIOD_S, float(gap.read_text()) if gap.exists() else 0.0)


@contextmanager
def simulated_host(host: Path):
    """The RAPL writer running over `host` (a new folder); yields the environment variables that
    make a Python process started with them see the simulated GPU + RAPL host."""
    writer = subprocess.Popen(
        [sys.executable, str(SIMULATED_HOST / "rapl_writer.py"), str(host),
         str(PACKAGE_IDLE_W), str(PACKAGE_BUSY_W), str(DRAM_W), "262143"]
    )  # fmt: skip
    try:
        while not (host / "ready").exists():
            time.sleep(0.05)
        yield {
            "PYTHONPATH": os.pathsep.join([str(SIMULATED_HOST), os.environ.get("PYTHONPATH", "")]),
            "JOULEBENCH_SIMULATED_HOST": str(host),
            "SIMULATED_GPU_IDLE_W": str(GPU_IDLE_W),
            "SIMULATED_GPU_BUSY_W": str(GPU_BUSY_W),
        }
    finally:
        writer.terminate()
        writer.wait()
