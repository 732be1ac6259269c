"""SIMULATED RAPL for tests: keeps a powercap tree's counters moving like a CPU package's.

Run as `python rapl_writer.py ROOT IDLE_W BUSY_W DRAM_W MAX_ENERGY_J`: it creates
ROOT/intel-rapl/intel-rapl:0 (package-0, with a dram sub-zone) and, every 10 ms, adds
IDLE_W + BUSY_W x host CPU utilisation (every process: RAPL meters the whole package) to the
package counter and DRAM_W to the DRAM counter, wrapping at MAX_ENERGY_J as real counters do.
Each write is atomic (temp file + rename), so a reader never sees half a number. On a loaded
host the writer can wake late, and a counter then stands still for longer than 10 ms: it keeps
the longest gap between two updates in ROOT/longest_period_s, the resolution a test may expect.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

import psutil

PERIOD_S = 0.01


def host_busy_seconds() -> float:
    # As joulebench.energy.meter counts it: busy time of every core, guest time once.
    times = psutil.cpu_times()
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - guest


def write(path: Path, value: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(value)
    os.replace(temporary, path)


def main(root: str, idle_w: float, busy_w: float, dram_w: float, max_energy_j: float) -> None:
    package = Path(root) / "intel-rapl" / "intel-rapl:0"
    dram = package / "intel-rapl:0:0"
    max_uj = int(max_energy_j * 1e6)
    for zone, name in ((package, "package-0"), (dram, "dram")):
        zone.mkdir(parents=True, exist_ok=True)
        write(zone / "name", name + "\n")
        write(zone / "max_energy_range_uj", f"{max_uj}\n")
    cores = psutil.cpu_count() or 1
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)  # wake on time beside busy jobs, where allowed
    package_uj = dram_uj = 0.0
    longest = PERIOD_S
    last_time, last_busy = time.time(), host_busy_seconds()
    while True:
        write(package / "energy_uj", f"{int(package_uj) % max_uj}\n")
        write(dram / "energy_uj", f"{int(dram_uj) % max_uj}\n")
        (Path(root) / "ready").touch()
        time.sleep(PERIOD_S)
        now, busy = time.time(), host_busy_seconds()
        span = now - last_time
        if span > longest:
            longest = span
            write(Path(root) / "longest_period_s", f"{longest}\n")
        # Not clipped at 1: the kernel books CPU time in 10 ms ticks, so one period can see two.
        utilisation = max(0.0, (busy - last_busy) / (span * cores))
        package_uj += (idle_w + busy_w * utilisation) * span * 1e6
        dram_uj += dram_w * span * 1e6
        last_time, last_busy = now, busy


if __name__ == "__main__":
    main(sys.argv[1], *(float(value) for value in sys.argv[2:6]))
