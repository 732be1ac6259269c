"""How fast the host ran during each energy window: a reference workload, steal time, frequency.

Where no counter exists the energy is CPU seconds x power per core, so a host that runs slower
(a VM's CPU speed, time stolen by the hypervisor) charges more joules for the same work, and the
seeds of one run share that state: the run's intervals do not cover it. So before a window opens
(outside it: its time is never charged) the meter times a fixed, tiny reference workload on one
thread, REFERENCE, and records its rate, `host_speed` (reference units per CPU-second). Each window
also records the hypervisor's steal time over it, from /proc/stat, as a share of the window's CPU
capacity (`steal_share`), and the CPU frequency psutil reports at its start (`cpu_freq_mhz`).

Phase windows (epochs, rounds) open inside their rule's window, where a probe would be charged to
the rule: they carry the index of the probe taken before the rule's window opened
(`host_speed_probed_before` names it). The report compares each job's index with the run's
median (SLOW_HOST_RATIO).

Torch and psutil are imported where they are used: the report (envs/report.yaml, which has
neither) imports this module for its run-level figures.
"""

import statistics
import time

from joulebench.evaluate.protocol import median_and_spread

# A matmul of two fixed 128 x 128 float32 matrices on one thread is one unit, timed in the
# thread's CPU time; bump the version whenever the workload or its timing changes, so indices of
# different workloads are never compared.
REFERENCE = "torch-matmul-128x128-fp32-1thread-cputime/1"
REFERENCE_SIZE = 128
REFERENCE_CHUNKS = 5
REFERENCE_UNITS_PER_CHUNK = 80
# A job whose index is under this share of the run's median ran on a notably slower host. 10% is
# below the slowdown (about 15%) at which two runs' intervals stop covering each other, and above
# the probe's spread in a burst on a quiet host: on a shared 2-core VM, 40 probes in a row had a CV
# of 0.5% at a quiet moment, 6-9% (lowest 0.89-0.95 of the median) while two other users' jobs
# loaded it (docs/measurement-protocol.md, "Host speed"; docs/results/).
SLOW_HOST_RATIO = 0.90
# The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal guest
# guest_nice, in clock ticks since boot. Guest time is already inside user and nice.
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# What probe() and the meter add to every window record.
WINDOW_FIELDS = (
    "host_speed",
    "host_speed_wall",
    "host_speed_reference",
    "host_speed_probe_s",
    "host_speed_probed_before",
    "cpu_freq_mhz",
    "steal_share",
)


def probe(before_window: str) -> dict:
    """Time the reference workload on one torch thread (the caller's setting is restored).

    `host_speed` is units per CPU-second of the probing thread, the median over REFERENCE_CHUNKS
    chunks: the estimate charges CPU seconds, so this is the rate that moves it, and time the
    thread spends preempted by other processes (which `busy_host` reports) does not lower it.
    `host_speed_wall` is the same per wall-clock second.
    """
    import torch

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=generator)
    b = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.mm(a, b)  # first call allocates
        cpu, wall = [], []
        for _ in range(REFERENCE_CHUNKS):
            cpu_started, wall_started = time.thread_time(), time.perf_counter()
            for _ in range(REFERENCE_UNITS_PER_CHUNK):
                torch.mm(a, b)
            cpu.append(time.thread_time() - cpu_started)
            wall.append(time.perf_counter() - wall_started)
    finally:
        torch.set_num_threads(previous)
    return {
        "host_speed": REFERENCE_UNITS_PER_CHUNK / max(statistics.median(cpu), 1e-9),
        "host_speed_wall": REFERENCE_UNITS_PER_CHUNK / statistics.median(wall),
        "host_speed_reference": REFERENCE,
        "host_speed_probe_s": time.perf_counter() - started,
        "host_speed_probed_before": before_window,
    }


def parse_proc_stat(text: str) -> dict[str, int] | None:
    """The host's aggregate CPU ticks by kind from /proc/stat's `cpu` line (None without one;
    kernels older than 2.6.11 have no steal column: 0)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (len(PROC_STAT_FIELDS) - len(values))
            return dict(zip(PROC_STAT_FIELDS, values[: len(PROC_STAT_FIELDS)], strict=True))
    return None


def read_proc_stat(path: str = "/proc/stat") -> dict[str, int] | None:
    try:
        with open(path) as handle:
            return parse_proc_stat(handle.read())
    except OSError:
        return None


def steal_share(start: dict | None, end: dict | None) -> float | None:
    """Ticks stolen by the hypervisor over all ticks of the window (all CPUs); None where
    /proc/stat is missing or no tick elapsed."""
    if start is None or end is None:
        return None
    elapsed = sum(end[key] - start[key] for key in PROC_STAT_FIELDS)
    if elapsed <= 0:
        return None
    return (end["steal"] - start["steal"]) / elapsed


def cpu_freq_mhz() -> float | None:
    """The current CPU frequency psutil reports (mean over CPUs), None where it reports none."""
    import psutil

    try:
        frequency = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        return None
    return float(frequency.current) if frequency and frequency.current else None


RUN_COLUMNS = (
    "run_host_speed_median",
    "run_host_speed_iqr",
    "run_host_speed_min",
    "run_host_speed_max",
    "run_host_speed_n",
)


def run_host_speed(records) -> dict:
    """The run's host speed from its jobs' energy records (one probe each; records made before
    the index existed, or with another REFERENCE, are left out): median, IQR, range, n."""
    speeds = sorted(
        r["host_speed"]
        for r in records
        if r.get("host_speed") is not None and r.get("host_speed_reference") == REFERENCE
    )
    if not speeds:
        return dict.fromkeys(RUN_COLUMNS) | {"run_host_speed_n": 0}
    median, iqr = median_and_spread(speeds)
    return dict(zip(RUN_COLUMNS, (median, iqr, speeds[0], speeds[-1], len(speeds)), strict=True))


def of_nodes(node_records: list[dict]) -> dict:
    """A data-parallel window's host facts over its nodes: the slowest node's index and frequency,
    the largest steal share (joulebench.train.data_parallel.combine_windows)."""
    slowest_node = min(node_records, key=lambda r: r.get("host_speed") or float("inf"))
    steals = [r["steal_share"] for r in node_records if r.get("steal_share") is not None]
    facts = {key: value for key, value in slowest_node.items() if key in WINDOW_FIELDS}
    return {**facts, "steal_share": max(steals, default=None)}


def slowest(records) -> float | None:
    """The lowest index among records (the slowest host any of them ran on), None if none has one."""
    speeds = [r["host_speed"] for r in records if r.get("host_speed_reference") == REFERENCE]
    return min(speeds) if speeds else None
