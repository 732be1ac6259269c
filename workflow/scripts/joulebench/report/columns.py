"""The energy columns of the report: provenance, contention, idle-corrected energy, carbon and cost.

`joulebench.report.aggregate.build_table` adds these to each row. Everything is derived here, at aggregation,
from the raw joules of the records, so the records stay the single source of truth.
"""

from joulebench.energy import host_speed
from joulebench.energy.contention import busy_joules, find_contention
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
            **self.busy_host_columns(chain, pipeline_joules, baseline),
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
        row's energy to produce each carries; and those that could move the row's verdicts
        (`pipeline_slow_host`, `verdict_slow_jobs`: verdict_movers decides)."""
        slow = {
            label: self.records[label]["joules"] for label in dict.fromkeys(chain) if self._is_slow(label)
        }
        if baseline is not None:
            slow |= {label: self.records[label]["joules"] for label in baseline[0] if self._is_slow(label)}
        movers = verdict_movers(slow, (chain, pipeline_joules), baseline)
        return {
            "own_host_speed": record.get("host_speed"),
            "pipeline_host_speed_min": host_speed.slowest(self.records[label] for label in chain),
            "pipeline_slow_jobs": _shares(slow, chain, pipeline_joules),
            "pipeline_slow_share": _share(slow, chain, pipeline_joules)
            if self.run_speed["run_host_speed_median"]
            else None,
            "pipeline_slow_host": bool(movers),
            "verdict_slow_jobs": describe_movers(movers, "energy to produce"),
            **self.run_speed,
        }

    def busy_host_columns(
        self, chain: list[str], pipeline_joules: float, baseline: tuple[list[str], float] | None
    ) -> dict:
        """The lineage's jobs with a `busy_host` window, each with the share of the row's energy to
        produce its busy windows carry (`pipeline_busy_jobs`, `pipeline_busy_share`), and those that
        could move the row's verdicts (`pipeline_busy_host`, `verdict_busy_jobs`: verdict_movers
        decides). A record keeps its raw per-window facts; `own_busy_host` is the row's own job's."""
        labels = dict.fromkeys([*chain, *(baseline[0] if baseline else [])])
        busy = {label: busy_joules(self.records[label]) for label in labels}
        busy = {label: joules for label, joules in busy.items() if joules is not None}
        movers = verdict_movers(busy, (chain, pipeline_joules), baseline)
        return {
            "pipeline_busy_jobs": _shares(busy, chain, pipeline_joules),
            "pipeline_busy_share": _share(busy, chain, pipeline_joules),
            "pipeline_busy_host": bool(movers),
            "verdict_busy_jobs": describe_movers(movers, "energy to produce"),
        }

    def _is_slow(self, label: str) -> bool:
        """Whether the job of record `label` ran under SLOW_HOST_RATIO of the run's median speed."""
        median = self.run_speed["run_host_speed_median"]
        speed = host_speed.slowest([self.records[label]])
        return None not in (speed, median) and speed < host_speed.SLOW_HOST_RATIO * median


def verdict_movers(
    flagged: dict[str, float], variant: tuple[list[str], float], baseline: tuple[list[str], float] | None
) -> dict[str, tuple[str, float]]:
    """The flagged parts that could move a row's verdict: label -> (side, share of that side's total).

    A verdict pairs the row with its baseline seed by seed: `variant` and `baseline` are each side's
    parts (the job records behind its energy to produce, or its inference rounds) and its total;
    None for the baseline's own row, which has no verdict of its own. `flagged` maps each flagged
    part to the most its flag can have added to it: the energy of its flagged windows, since what
    other processes or a slow host added is inside that figure. A part both sides hold (the data
    jobs, the training a compressed model starts from) adds the same to both and cancels. The rest
    leave the true difference d (variant minus baseline) between d minus what they added on the
    variant's side and d plus what they added on the baseline's: they can reverse or erase it only
    where that range reaches 0, that is where the flagged parts of the dearer side together carry
    at least the difference. Those parts are returned; where they cannot, none is."""
    if baseline is None:
        return {}
    (parts, total), (baseline_parts, baseline_total) = variant, baseline
    sides = {
        "the variant's": (parts, baseline_parts, total, 1),
        "the baseline's": (baseline_parts, parts, baseline_total, -1),
    }
    difference = total - baseline_total
    movers = {}
    for side, (mine, theirs, side_total, sign) in sides.items():
        added = {
            label: flagged[label] for label in dict.fromkeys(mine) if label in flagged and label not in theirs
        }
        if added and sign * difference >= 0 and sum(added.values()) >= sign * difference:
            movers |= {
                label: (side, joules / side_total if side_total else 0.0) for label, joules in added.items()
            }
    return movers


def describe_movers(movers: dict[str, tuple[str, float]], what: str) -> str:
    """'label (12% of the variant's energy to produce);...' for verdict_movers' answer."""
    return ";".join(f"{label} ({share:.0%} of {side} {what})" for label, (side, share) in movers.items())


def _shares(flagged: dict[str, float], parts: list[str], total: float) -> str:
    """'label (12%);...': each flagged part of `parts`, with its share of `total`."""
    return ";".join(
        f"{label} ({flagged[label] / total if total else 0.0:.0%})"
        for label in dict.fromkeys(parts)
        if label in flagged
    )


def _share(flagged: dict[str, float], parts: list[str], total: float) -> float:
    """The share of `total` that the flagged parts of `parts` carry together."""
    return sum(flagged[label] for label in dict.fromkeys(parts) if label in flagged) / total if total else 0.0


def inference_busy_columns(rounds: list[dict], baseline_rounds: list[dict] | None) -> dict:
    """The row's interleaved inference rounds (joulebench.report.aggregate.read_rounds: seed, round, variant,
    joules_per_1k, busy_host) taken while other processes loaded the host, with the share of the
    row's inference energy each carries (`inference_busy_rounds`), and those that could move its
    inference verdict (`inference_busy_host`, `verdict_busy_rounds`). The verdict pairs each round
    with the baseline's of the same round (joulebench.report.stats.round_differences), so its two sides are
    the rounds both ran, and verdict_movers decides; `baseline_rounds` is None for the baseline's
    own row."""
    common = {row["round"] for row in rounds}
    if baseline_rounds is not None:
        common &= {row["round"] for row in baseline_rounds}
    flagged, sides = {}, []
    for side in (rounds, baseline_rounds or []):
        paired = [row for row in side if row["round"] in common]
        labels = [f"seed{row['seed']}/round{row['round']}:{row['variant']}" for row in paired]
        flagged |= {
            label: row["joules_per_1k"] for label, row in zip(labels, paired, strict=True) if row["busy_host"]
        }
        sides.append((labels, sum(row["joules_per_1k"] for row in paired)))
    variant, baseline = sides
    movers = verdict_movers(flagged, variant, baseline if baseline_rounds is not None else None)
    return {
        "inference_busy_rounds": _shares(flagged, variant[0], variant[1]),
        "inference_busy_host": bool(movers),
        "verdict_busy_rounds": describe_movers(movers, "inference energy"),
    }


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
