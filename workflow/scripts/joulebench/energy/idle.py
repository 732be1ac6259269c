"""The idle baseline: the host's devices measured doing nothing."""

import time

from joulebench.devices import CPU, Placement
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter


def idle_record(
    seconds: float, estimate: EstimateModel | None = None, placement: Placement = CPU, monitor=None
) -> dict:
    """Measure the devices doing nothing for `seconds`: the idle baseline of this host.

    The record gains `idle_power_w` (device_id -> watts) for measured devices only. An estimate
    has no idle component (the Green Algorithms model charges CPU time, which an idle process
    barely has), so where nothing is measured `idle_power_w` is empty.
    """
    with EnergyMeter("measure_idle_power", estimate, placement, monitor) as meter:
        time.sleep(seconds)
    record = meter.record()
    record["idle_power_w"] = {
        device["device_id"]: device["joules"] / record["wall_time_s"] for device in record["devices"].values()
    }
    return record
