"""Contention: records whose windows overlapped on one physical device of one host."""

import pytest

from joulebench.energy.contention import find_contention


def record(start, end, *device_ids, host="node1"):
    devices = {f"dev{i}": {"device_id": device_id, "joules": 1.0} for i, device_id in enumerate(device_ids)}
    return {"host": host, "start_unix": start, "end_unix": end, "devices": devices}


def test_overlap_on_the_same_gpu_is_contended_both_ways():
    records = {
        "train_a": record(0, 10, "gpu:GPU-1"),
        "train_b": record(5, 15, "gpu:GPU-1"),
        "eval_c": record(20, 30, "gpu:GPU-1"),
    }
    assert find_contention(records) == {"train_a": ["train_b"], "train_b": ["train_a"], "eval_c": []}


def test_different_gpus_or_hosts_do_not_contend():
    records = {
        "gpu1": record(0, 10, "gpu:GPU-1"),
        "gpu2": record(0, 10, "gpu:GPU-2"),
        "other_host": record(0, 10, "gpu:GPU-1", host="node2"),
    }
    assert all(others == [] for others in find_contention(records).values())


def test_rapl_package_shared_by_a_gpu_job_and_a_cpu_job():
    # Both read package 0's RAPL counter: the CPU job inflates the GPU job's CPU joules.
    records = {
        "train_gpu": record(0, 100, "gpu:GPU-1", "cpu:package0"),
        "quantize_cpu": record(50, 60, "cpu:package0", "dram:package0"),
        "later": record(100, 110, "cpu:package0"),  # starts as train_gpu ends: touching, not overlapping
    }
    result = find_contention(records)
    assert result["train_gpu"] == ["quantize_cpu"]
    assert result["quantize_cpu"] == ["train_gpu"]
    assert result["later"] == []


def test_nested_and_chained_overlaps_are_all_found():
    records = {
        "long": record(0, 100, "cpu:package0"),
        "first": record(10, 20, "cpu:package0"),
        "second": record(30, 40, "cpu:package0"),
        "straddle": record(95, 120, "cpu:package0"),
        "after": record(110, 130, "cpu:package0"),
    }
    result = find_contention(records)
    assert result["long"] == ["first", "second", "straddle"]
    assert result["first"] == ["long"]
    assert result["straddle"] == ["after", "long"]
    assert result["after"] == ["straddle"]


def test_estimates_have_no_device_and_are_never_contended():
    records = {"a": record(0, 10), "b": record(0, 10)}
    assert find_contention(records) == {"a": [], "b": []}


# --- The report's energy columns, from records written to disk ---------------------------------


def measured_record(start, end, joules, device_id="gpu:GPU-MOCK-1", host="node1"):
    """An energy record as EnergyMeter writes it for one MOCK GPU (no hardware here)."""
    return {
        "schema": "joulebench.energy/1",
        "rule": "train_model",
        "host": host,
        "slurm_job_id": "77",
        "zeus_version": "0.16.0",
        "start_unix": start,
        "end_unix": end,
        "wall_time_s": end - start,
        "measured": True,
        "joules": joules,
        "source": "nvml-counter",
        "short_windows": [],
        "hardware": {"gpu0": {"driver_version": "550.54.15"}},
        "devices": {
            "gpu0": {
                "joules": joules,
                "source": "nvml-counter",
                "name": "NVIDIA H200 (MOCK)",
                "device_id": device_id,
            }
        },
    }


def test_report_table_flags_contention_and_adds_provenance_carbon_and_dynamic_energy(tmp_path):
    from joulebench import store
    from joulebench.report.aggregate import build_table

    data = {**measured_record(0, 10, 100.0), "devices": {}, "measured": False, "source": "estimate:x"}
    # Two seeds trained at the same time on the same GPU (measured slots raised), evaluated apart.
    records = {
        0: (measured_record(10, 110, 5000.0), measured_record(300, 310, 50.0)),
        1: (measured_record(60, 160, 5200.0), measured_record(400, 410, 50.0)),
    }
    entries = []
    for seed, (train, evaluation) in records.items():
        paths = {kind: str(tmp_path / f"{kind}{seed}.json") for kind in ("energy", "eval_energy", "metrics")}
        store.write_json(paths["energy"], train)
        store.write_json(paths["eval_energy"], evaluation)
        store.write_json(paths["metrics"], {"test_accuracy": 0.9})
        entries.append({"dataset": "d", "model": "m", "variant": "baseline", "seed": seed, **paths})
    idle = {**measured_record(0, 1, 40.0), "idle_power_w": {"gpu:GPU-MOCK-1": 40.0}}
    carbon = {"intensity_g_per_kwh": 400.0, "pue": 1.5, "price_per_kwh": 0.2, "currency": "EUR"}

    table = build_table(entries, {}, data, carbon, idle).set_index("seed")

    assert table["own_contended"].tolist() == [True, True]
    assert table.loc[0, "own_contended_with"] == entries[1]["energy"]
    assert table["pipeline_contended"].all()
    assert not table["inference_contended"].any()
    assert table.loc[0, "own_energy_hardware"] == "gpu0: NVIDIA H200 (MOCK) [nvml-counter, driver 550.54.15]"
    assert (table["host"] == "node1").all() and (table["zeus_version"] == "0.16.0").all()
    # Dynamic energy: 5000 J minus 40 W idle over the 100 s window.
    assert table.loc[0, "own_dynamic_energy_j"] == 5000.0 - 40.0 * 100
    # Pipeline = data 100 J + training 5000 J = 5100 J = 1/706 kWh; x PUE 1.5 x 400 g/kWh.
    assert table.loc[0, "pipeline_gco2e"] == pytest.approx(5100 / 3.6e6 * 1.5 * 400)
    assert table.loc[0, "pipeline_cost"] == pytest.approx(5100 / 3.6e6 * 1.5 * 0.2)
    assert table.loc[0, "carbon_intensity_source"] == "energy.carbon.intensity_g_per_kwh (config)"


def test_a_job_waits_for_a_quiet_host_before_its_window_and_gives_up_after_the_limit():
    from joulebench.energy.contention import QUIET_MAX_WAIT_S, QUIET_SAMPLE_S, wait_for_quiet_host

    clock = {"own": 0.0, "host": 0.0}
    # Other processes use 50% of 2 cores for three samples, then 2%.
    shares = iter([0.5, 0.5, 0.5, 0.02])

    def sleep(seconds):
        clock["host"] += next(shares) * seconds * 2

    waited = wait_for_quiet_host(lambda: clock["own"], lambda: clock["host"], 2, sleep)
    assert waited["quiet"] is True
    assert waited["seconds"] == pytest.approx(4 * QUIET_SAMPLE_S)
    assert waited["other_processes_cpu_share"] == pytest.approx(0.02)

    def busy(seconds):  # the host never quiets down: the job waits no longer than the limit
        clock["host"] += 0.5 * seconds * 2

    waited = wait_for_quiet_host(lambda: clock["own"], lambda: clock["host"], 2, busy)
    assert waited["quiet"] is False and waited["seconds"] == pytest.approx(QUIET_MAX_WAIT_S)

    def own_work(seconds):  # this process's own CPU time is never "other processes"
        clock["own"] += seconds * 2
        clock["host"] += seconds * 2

    assert wait_for_quiet_host(lambda: clock["own"], lambda: clock["host"], 2, own_work)["quiet"] is True
