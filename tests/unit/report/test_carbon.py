"""Carbon and cost from joules: the arithmetic, the shipped table, and the config errors."""

import pytest

from joulebench.config import resolved_config
from joulebench.report.carbon import CarbonSettingsError, carbon_model, read_intensity_table


def with_defaults(carbon: dict) -> dict:
    """energy.carbon as the rules see it: the schema's defaults (pue, currency) filled in."""
    config = resolved_config()
    config["energy"]["carbon"] = carbon
    return resolved_config(config)["energy"]["carbon"]


def test_arithmetic_from_joules():
    model = carbon_model({"intensity_g_per_kwh": 400.0, "pue": 1.5, "price_per_kwh": 0.2, "currency": "EUR"})
    joules = 7.2e6  # 2 kWh of IT energy -> 3 kWh drawn by the facility
    assert model.facility_kwh(joules) == pytest.approx(3.0)
    assert model.grams_co2e(joules) == pytest.approx(1200.0)
    assert model.cost(joules) == pytest.approx(0.6)
    assert model.currency == "EUR"
    assert model.intensity_source == "energy.carbon.intensity_g_per_kwh (config)"


def test_defaults_are_world_average_and_uptime_pue():
    model = carbon_model(with_defaults({}))
    assert model.intensity_g_per_kwh == 475.0 and model.pue == 1.67
    assert model.intensity_source.startswith("WORLD (World average, 2019): IEA")
    assert model.cost(3.6e6) is None  # no price configured, no cost
    # 1 kWh of IT energy in the default facility: 1.67 kWh x 475 g/kWh.
    assert model.grams_co2e(3.6e6) == pytest.approx(793.25)


def test_region_from_the_shipped_table_with_its_source():
    table = read_intensity_table()
    assert len(table) >= 30 and all(row["source"] for row in table.values())
    model = carbon_model(with_defaults({"region": "FR", "pue": 1.0}))
    assert model.intensity_g_per_kwh == 51.28
    assert "AIB 2021" in model.intensity_source
    assert model.grams_co2e(3.6e6) == pytest.approx(51.28)


def test_own_intensity_can_cite_its_source():
    model = carbon_model(
        with_defaults({"intensity_g_per_kwh": 120.0, "intensity_source": "Ember 2023, Ontario"})
    )
    assert model.intensity_source == "Ember 2023, Ontario"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"region": "ATLANTIS"}, "energy.carbon.region: unknown region 'ATLANTIS'"),
        ({"region": "FR", "intensity_g_per_kwh": 50.0}, "either region or intensity_g_per_kwh"),
        ({"pue": 0.9}, "energy.carbon.pue"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(CarbonSettingsError, match=message):
        carbon_model({**with_defaults({}), **settings})  # past the schema, which rejects some too
