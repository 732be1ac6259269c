"""Which energy records shared a measured device while their windows were open.

NVML and RAPL count everything the device does, whoever does it: two jobs measured at the same
time on one GPU (or one CPU package) each book the other's work as their own. The workflow avoids
that by scheduling (`measured` and `gpu` resources, profiles/default), and this module checks that
it worked: it compares every record of a run and names those whose windows overlapped in time on
the same physical device of the same host. Such records are "contended"; the report flags them.

Estimated records have no device (the estimate charges the process's own CPU time, which other
jobs do not inflate), so they are never contended.
"""

# Share of the host's CPU capacity used by other processes above which a window is `busy_host`,
# provided they used at least BUSY_HOST_MIN_CPU_S: the kernel counts CPU time in 10 ms ticks, so
# in a 50 ms window one tick of a background daemon would otherwise read as 10% of two cores.
BUSY_HOST_SHARE = 0.10
BUSY_HOST_MIN_CPU_S = 0.1
# Before a job's window opens, wait (at most QUIET_MAX_WAIT_S) until other processes used under
# BUSY_HOST_SHARE of the host over one QUIET_SAMPLE_S sample. A job forked from the warm worker
# (joulebench.run.warm_worker) opens its window a fraction of a second after Snakemake started it, while
# Snakemake still books the job before: the first training job of a run was flagged busy_host, at
# 8-13% of the host, where later seeds saw 2-7%.
QUIET_SAMPLE_S = 0.1
QUIET_MAX_WAIT_S = 2.0


def wait_for_quiet_host(own_cpu_seconds, host_busy_cpu_seconds, cores: int, sleep) -> dict:
    """Sample the other processes' share of the host until it is under BUSY_HOST_SHARE; the
    callables read this process's and the host's CPU seconds. Returns how long it waited, whether
    the host became quiet, and the last sample's share (the record's `quiet_host_wait`)."""
    waited, share = 0.0, 1.0
    while waited < QUIET_MAX_WAIT_S:
        own, host = own_cpu_seconds(), host_busy_cpu_seconds()
        sleep(QUIET_SAMPLE_S)
        waited += QUIET_SAMPLE_S
        others = (host_busy_cpu_seconds() - host) - (own_cpu_seconds() - own)
        share = max(0.0, others) / (QUIET_SAMPLE_S * cores)
        if share < BUSY_HOST_SHARE:
            return {"seconds": round(waited, 3), "quiet": True, "other_processes_cpu_share": share}
    return {"seconds": round(waited, 3), "quiet": False, "other_processes_cpu_share": share}


def device_keys(record: dict) -> set[tuple[str, str]]:
    """(host, physical device) of every device the record measured."""
    return {(record["host"], device.get("device_id", name)) for name, device in record["devices"].items()}


def find_contention(records: dict[str, dict]) -> dict[str, list[str]]:
    """For each record label, the labels of the records it shared a device with, overlapping in time.

    Windows that only touch (one ends as the next starts) do not overlap. Sweep in start order,
    keeping the windows still open; runs have hundreds of records, so this stays cheap.
    """
    spans = sorted(
        (record["start_unix"], record["end_unix"], label, device_keys(record))
        for label, record in records.items()
    )
    contended = {label: [] for label in records}
    still_open = []
    for start, end, label, devices in spans:
        still_open = [span for span in still_open if span[1] > start]
        for _, _, other, other_devices in still_open:
            if devices & other_devices:
                contended[label].append(other)
                contended[other].append(label)
        still_open.append((start, end, label, devices))
    return {label: sorted(others) for label, others in contended.items()}


def busy_joules(record: dict) -> float | None:
    """The joules of a record's `busy_host` windows, the most other processes can have added to it;
    None where none is busy. The rule's window holds all the others: where it is busy, the whole
    record; else its busy phase windows (epochs, calibration, inference), which follow one another.
    A record that lists busy windows without their figures (a merged data-parallel record) counts
    whole."""
    if not record.get("busy_host_windows"):
        return None
    phases = [window for window in record.get("windows", []) if window.get("busy_host")]
    if record.get("busy_host") or not phases:
        return record["joules"]
    return min(record["joules"], sum(window["joules"] for window in phases))
