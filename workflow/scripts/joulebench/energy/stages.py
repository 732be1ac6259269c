"""The energy rule's stage: the host's idle power."""

import logging

from joulebench import store
from joulebench.devices import accelerator
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.idle import idle_record

log = logging.getLogger(__name__)


def measure_idle_power(inputs: dict, outputs: dict, seconds: float, estimate: dict) -> None:
    """The idle-power record of this host, measured before the experiment's jobs."""
    # The devices the experiment's jobs compute on: the CPU packages and the job's GPU.
    record = idle_record(seconds, EstimateModel(**estimate), accelerator())
    log.info("idle power: %s", record["idle_power_w"] or "not measured (no energy counter here)")
    store.write_json(outputs["idle"], record)
