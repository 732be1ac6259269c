"""The energy columns of the report: provenance, contention, idle-corrected energy, carbon and cost.

`joulebench.report.aggregate.build_table` adds these to each row. Everything is derived here, at aggregation,
from the raw joules of the records, so the records stay the single source of truth.
"""

from joulebench.energy import host_speed
from joulebench.energy.contention import find_contention
from joulebench.report.carbon import carbon_model


def hardware_summary(record: dict) -> str:
    """'gpu0: NVIDIA H200 [nvml-counter, driver 550.54.15]; cpu: estimate:green-algorithms', the
    metered devices then the estimated parts, or 'none measured (...)'."""
    if not record["devices"]:
        return f"none measured ({record['source']})"
    parts = []
    for key, device in record["devices"].items():
        facts = record.get("hardware", {}).get(key, {})
        driver = f", driver {facts['driver_version']}" if facts.get("driver_version") else ""
        parts.append(f"{key}: {device['name']} [{device['source']}{driver}]")
    for part in record.get("parts", []):
        if part["source"].startswith("estimate"):
            parts.append(f"{part['part']} [{part['source']}]")
    return "; ".join(parts)


class EnergyColumns:
    """Per-row energy columns, given every energy record of the run (label -> record) at once.

    Labels are how the report names records (their paths); contention compares all of them.
    """

    def __init__(self, records: dict[str, dict], carbon: dict, idle: dict | None):
        self.records = records
        self.contended_with = find_contention(records)
        self.carbon = carbon_model(carbon)
        self.idle = idle
        self.run_speed = host_speed.run_host_speed(records.values())

    def row(
        self,
        own: str,
        chain: list[str],
        pipeline_joules: float,
        evaluation: str | None = None,
        baseline: tuple[list[str], float] | None = None,
    ) -> dict:
        """Columns for one model: record `own` made it; `chain` labels every record of its lineage;
        `baseline`: the chain and energy to produce of the model its verdicts compare it with (the
        same seed's baseline), None for the baseline itself."""
        record = self.records[own]
        columns = {
            "own_energy_hardware": hardware_summary(record),
            "own_contended": bool(self.contended_with[own]),
            "own_contended_with": ";".join(self.contended_with[own]),
            "pipeline_contended": any(self.contended_with[label] for label in chain),
            "own_short_windows": ";".join(record.get("short_windows", [])),
            "own_busy_host": bool(record.get("busy_host_windows")),
            "pipeline_busy_host": any(self.records[label].get("busy_host_windows") for label in chain),
            "own_busy_gpu": bool(record.get("busy_gpu_windows")),
            "pipeline_busy_gpu": any(self.records[label].get("busy_gpu_windows") for label in chain),
            "own_dynamic_energy_j": dynamic_joules(record, self.idle),
            "own_dynamic_energy_unknown_because": idle_baseline_gap(record, self.idle),
            **self.host_speed_columns(record, chain, pipeline_joules, baseline),
            "host": record["host"],
            "slurm_job_id": record.get("slurm_job_id"),
            "zeus_version": record["zeus_version"],
            "own_gco2e": self.carbon.grams_co2e(record["joules"]),
            "pipeline_gco2e": self.carbon.grams_co2e(pipeline_joules),
            "pipeline_cost": self.carbon.cost(pipeline_joules),
            "cost_currency": self.carbon.currency,
            "carbon_intensity_g_per_kwh": self.carbon.intensity_g_per_kwh,
            "pue": self.carbon.pue,
            "carbon_intensity_source": self.carbon.intensity_source,
        }
        if evaluation is not None:
            columns["inference_contended"] = bool(self.contended_with[evaluation])
            columns["inference_short_windows"] = ";".join(self.records[evaluation].get("short_windows", []))
            columns["inference_busy_host"] = "inference" in self.records[evaluation].get(
                "busy_host_windows", []
            )
            columns["inference_busy_gpu"] = "inference" in self.records[evaluation].get(
                "busy_gpu_windows", []
            )
        return columns

    def host_speed_columns(
        self, record: dict, chain: list[str], pipeline_joules: float, baseline: tuple[list[str], float] | None
    ) -> dict:
        """The host-speed index of the row's own job and of the slowest job of its lineage; the
        lineage's jobs that ran under SLOW_HOST_RATIO of the run's median, with the share of the
        row's energy to produce each carries; and whether one could move the row's verdicts.

        A verdict compares the row with its baseline seed by seed, so a slow job that both made
        (the shared data jobs, the baseline training a pruned model starts from) adds to both sides
        and cancels; only a slow job of one side can move it (`pipeline_slow_host`,
        `verdict_slow_jobs`). The baseline's own row has no verdict of its own."""
        slow = [label for label in dict.fromkeys(chain) if self._is_slow(label)]
        shares = {label: self._share(label, pipeline_joules) for label in slow}
        one_sided = []
        if baseline is not None:
            baseline_chain, baseline_joules = baseline
            for label in dict.fromkeys([*chain, *baseline_chain]):
                if self._is_slow(label) and (label in chain) != (label in baseline_chain):
                    side = "the variant's" if label in chain else "the baseline's"
                    joules = pipeline_joules if label in chain else baseline_joules
                    one_sided.append(
                        f"{label} ({self._share(label, joules):.0%} of {side} energy to produce)"
                    )
        return {
            "own_host_speed": record.get("host_speed"),
            "pipeline_host_speed_min": host_speed.slowest(self.records[label] for label in chain),
            "pipeline_slow_jobs": ";".join(f"{label} ({share:.0%})" for label, share in shares.items()),
            "pipeline_slow_share": sum(shares.values()) if self.run_speed["run_host_speed_median"] else None,
            "pipeline_slow_host": bool(one_sided),
            "verdict_slow_jobs": ";".join(one_sided),
            **self.run_speed,
        }

    def _is_slow(self, label: str) -> bool:
        """Whether the job of record `label` ran under SLOW_HOST_RATIO of the run's median speed."""
        median = self.run_speed["run_host_speed_median"]
        speed = host_speed.slowest([self.records[label]])
        return None not in (speed, median) and speed < host_speed.SLOW_HOST_RATIO * median

    def _share(self, label: str, pipeline_joules: float) -> float:
        return self.records[label]["joules"] / pipeline_joules if pipeline_joules else 0.0


def idle_baseline_gap(record: dict, idle: dict | None) -> str | None:
    """Why the idle baseline cannot be subtracted from `record`, or None where it can.

    It can only where the idle record was taken on the record's host and measured every device the
    record metered (by physical id: a GPU's UUID, a CPU package): under SLURM the idle job runs on
    one node and GPU, and another node's or another GPU's idle draw is never this job's.
    """
    if idle is None:
        return "no idle baseline in this run (energy.idle_baseline_seconds is 0 or auto without a counter)"
    if not record["devices"]:
        return "nothing metered: an estimate has no idle share"
    if idle.get("host") != record["host"]:
        return f"idle baseline taken on host {idle.get('host')}, this job ran on {record['host']}"
    idle_power = idle.get("idle_power_w", {})
    missing = [d["device_id"] for d in record["devices"].values() if d["device_id"] not in idle_power]
    if missing:
        return f"idle baseline on {record['host']} did not measure {', '.join(missing)}"
    return None


def dynamic_joules(record: dict, idle: dict | None) -> float | None:
    """Energy above the idle baseline: each metered device's joules - its idle power x wall time,
    plus the estimated parts (an estimate charges the work only: it has no idle share).

    None where it cannot be known (idle_baseline_gap says why).
    """
    if idle_baseline_gap(record, idle) is not None:
        return None
    idle_power = idle["idle_power_w"]
    total = record.get("estimated_joules", 0.0)
    for device in record["devices"].values():
        total += device["joules"] - idle_power[device["device_id"]] * record["wall_time_s"]
    return total
