"""Power per CPU core by CPU model (CodeCarbon's kept TDP table), and what every estimate says of it."""

import json

import pytest

from joulebench.config import resolved_config
from joulebench.energy import cpu_power, estimate, inventory
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter

# /proc/cpuinfo of a bare-metal host (no hypervisor flag) and of a virtual machine.
BARE_METAL = "processor\t: 0\ncpu cores\t: 20\nflags\t\t: fpu vme sse2 avx2\n"
VIRTUAL = "processor\t: 0\ncpu cores\t: 2\nflags\t\t: fpu vme sse2 avx2 hypervisor\n"
# /proc/cpuinfo "model name" lines of CPUs in CodeCarbon's table, and the row each takes.
KNOWN = {
    "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz": ("Intel Xeon Gold 6248", 150.0),
    "AMD EPYC 7763 64-Core Processor": ("AMD EPYC 7763", 280.0),
    "Intel(R) Core(TM) i7-8700K CPU @ 3.70GHz": ("Intel Core i7-8700K", 95.0),
}


@pytest.mark.parametrize("cpu_model", sorted(KNOWN))
def test_a_listed_cpu_model_on_bare_metal_takes_its_tdp_over_the_package_cores(cpu_model):
    row, tdp = KNOWN[cpu_model]
    watts, source = cpu_power.watts_per_core(cpu_model, BARE_METAL)
    assert watts == pytest.approx(tdp / 20)
    assert source == f"{cpu_power.table_name()}: {row} ({tdp:g} W / 20 cores)"
    assert source.startswith("CodeCarbon 3.3.2 cpu_power.csv")


def test_a_listed_cpu_model_in_a_virtual_machine_gets_the_generic_value_and_says_why():
    watts, source = cpu_power.watts_per_core("AMD EPYC 7763 64-Core Processor", VIRTUAL)
    assert watts == 12.0
    assert "AMD EPYC 7763 is in CodeCarbon 3.3.2 cpu_power.csv, 280 W" in source
    assert "a virtual machine's core count is not the CPU's" in source


@pytest.mark.parametrize(
    "cpu_model",
    [
        "AMD EPYC",  # a VM that hides the model number
        "Intel(R) Xeon(R) Gold 6248X CPU @ 2.50GHz",  # a listed model's name with another suffix
        "",
    ],
)
def test_an_unlisted_cpu_model_gets_the_generic_value_and_says_so(cpu_model):
    watts, source = cpu_power.watts_per_core(cpu_model, BARE_METAL)
    assert watts == 12.0
    assert (
        source
        == f"Green Algorithms generic 12 W per core (model {cpu_model!r} not in {cpu_power.table_name()})"
    )


def test_the_table_is_codecarbons_installed_file_read_without_importing_codecarbon():
    import sys

    assert cpu_power.table_path().parts[-4:] == ("codecarbon", *cpu_power.TABLE)
    assert len(cpu_power.tdp_table()) > 1000
    assert "codecarbon" not in sys.modules


def test_every_estimate_carries_the_power_per_core_its_source_and_what_it_leaves_out(monkeypatch):
    # SIMULATED HOST CPU: this machine's CPU is not in the table, so its model name is replaced by
    # one that is; the table, the meter and Zeus (no counter here) are real.
    monkeypatch.setattr(estimate, "cpu_model", lambda: "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz")
    monkeypatch.setattr(cpu_power, "read_cpuinfo", lambda: BARE_METAL)
    with EnergyMeter("unit") as meter, meter.window("work"):
        sum(range(200_000))
    record = meter.record()
    assert record["measured"] is False
    for facts in (record["estimate"], record["windows"][0]["estimate"]):
        assert facts["power_per_core_w"] == 7.5  # 150 W / 20 cores
        assert facts["power_per_core_source"].endswith("Intel Xeon Gold 6248 (150 W / 20 cores)")
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
    assert repr(record["cpu_model"]) in source or record["cpu_model"] in source


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
