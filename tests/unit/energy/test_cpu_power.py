"""Power per CPU core by CPU model (Green Algorithms' TDP table), and what every estimate says of it."""

import json

import pytest

from joulebench.config import resolved_config
from joulebench.energy import cpu_power, estimate, inventory

# /proc/cpuinfo "model name" lines of CPUs in the table, and what the table gives per core.
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter

KNOWN = {
    "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz": (7.5, "Xeon Gold 6248"),
    "AMD EPYC 7763 64-Core Processor": (4.4, "AMD EPYC 7763"),
    "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz": (10.0, "Xeon E5-2680 v3"),
    "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz": (14.4, "Xeon E5-2670"),
    "Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz": (11.5, "Xeon E5-2670 v2"),
    "Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz": (15.8, "Core i7-8700K"),
    "AMD EPYC 7552 48-Core Processor": (4.2, "AMD 7552"),
}


@pytest.mark.parametrize("cpu_model", sorted(KNOWN))
def test_a_listed_cpu_model_takes_its_tdp_per_core_from_the_table(cpu_model):
    watts, row = KNOWN[cpu_model]
    assert cpu_power.watts_per_core(cpu_model) == (watts, f"Green Algorithms TDP table: {row}")


@pytest.mark.parametrize(
    "cpu_model",
    [
        "AMD EPYC",  # a VM that hides the model number (this project's machine)
        "Intel(R) Xeon(R) CPU E5-2670 v3 @ 2.30GHz",  # a listed model's name, another generation
        "AMD EPYC 9654 96-Core Processor",
        "",
    ],
)
def test_an_unlisted_cpu_model_gets_the_generic_value_and_says_so(cpu_model):
    watts, source = cpu_power.watts_per_core(cpu_model)
    assert watts == 12.0  # the table's own 'Any' row
    assert source == f"Green Algorithms generic 'Any' value (model {cpu_model} not in the table)"


def test_the_shipped_table_is_green_algorithms_file_with_its_provenance():
    path = cpu_power.table_path()
    assert path.parts[-3:] == cpu_power.TABLE_PARTS
    source = (path.parent / "SOURCE.md").read_text()
    assert "GreenAlgorithms/green-algorithms-tool" in source and "data/latest/TDP_cpu.csv" in source
    assert "ca65ba01888009ec7bd7db0dc8c18fc571da144e" in source and "CC BY 4.0" in source
    table = cpu_power.tdp_table()
    assert len(table) > 90 and table[cpu_power.GENERIC_ROW] == ("Any", 12.0)


def test_every_estimate_carries_the_power_per_core_its_source_and_what_it_leaves_out(monkeypatch):
    # SIMULATED HOST CPU: this machine's CPU is not in the table, so its model name is replaced by
    # one that is; the table, the meter and Zeus (no counter here) are real.
    monkeypatch.setattr(estimate, "cpu_model", lambda: "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz")
    with EnergyMeter("unit") as meter, meter.window("work"):
        sum(range(200_000))
    record = meter.record()
    assert record["measured"] is False
    for facts in (record["estimate"], record["windows"][0]["estimate"]):
        assert facts["power_per_core_w"] == 7.5
        assert facts["power_per_core_source"] == "Green Algorithms TDP table: Xeon Gold 6248"
        assert facts["cpu_joules"] == pytest.approx(facts["cpu_seconds"] * 7.5)
        assert facts["memory_counted"].startswith("peak RSS of the process")
        assert facts["idle_power_included"] is False and facts["pue_included"] is False
    json.dumps(record, allow_nan=False)


def test_this_hosts_estimate_names_its_own_cpu_model():
    watts, source = cpu_power.watts_per_core(inventory.cpu_model())
    with EnergyMeter("unit") as meter:
        sum(range(10_000))
    record = meter.record()
    assert (record["estimate"]["power_per_core_w"], record["estimate"]["power_per_core_source"]) == (
        watts,
        source,
    )
    assert record["cpu_model"] in source or source.startswith("Green Algorithms TDP table")


def test_a_configured_power_per_core_says_it_is_configured():
    model = EstimateModel(power_per_core_w=10.0)
    assert model.power_per_core_source == "energy.estimate.power_per_core_w"
    with EnergyMeter("unit", model) as meter:
        sum(range(10_000))
    estimate = meter.record()["estimate"]
    assert estimate["power_per_core_w"] == 10.0
    assert estimate["power_per_core_source"] == "energy.estimate.power_per_core_w"


def test_the_shipped_config_leaves_the_power_per_core_to_the_table():
    estimate = resolved_config()["energy"]["estimate"]
    assert "power_per_core_w" not in estimate
    model = EstimateModel(**estimate)  # what rule_meter builds from it
    assert (model.power_per_core_w, model.power_per_core_source) == cpu_power.watts_per_core(
        inventory.cpu_model()
    )
