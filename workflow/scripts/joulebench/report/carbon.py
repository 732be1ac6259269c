"""Carbon and cost from raw joules, applied only at aggregation.

Energy records hold joules as measured (or estimated) and nothing else, so one run can be
re-reported for any grid or data centre without re-measuring. Here:

    facility kWh = joules / 3.6e6 x PUE
    gCO2e        = facility kWh x grid carbon intensity (gCO2e/kWh)
    cost         = facility kWh x price per kWh

The grid intensity comes from the configured number or from the per-region table shipped in
workflow/resources/carbon_intensity.csv (annual averages; its header cites the source). No network
calls: a live intensity service would make a figure unreproducible.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

JOULES_PER_KWH = 3.6e6
TABLE = Path(__file__).resolve().parents[3] / "resources" / "carbon_intensity.csv"
# Where neither energy.carbon.region nor intensity_g_per_kwh is set (they exclude each other, so
# the schema cannot default either).
DEFAULT_REGION = "WORLD"


class CarbonSettingsError(ValueError):
    """An energy.carbon setting that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class CarbonModel:
    intensity_g_per_kwh: float
    pue: float
    intensity_source: str
    price_per_kwh: float | None = None
    currency: str | None = None

    def facility_kwh(self, joules: float) -> float:
        """Electricity drawn by the facility for `joules` of IT energy."""
        return joules / JOULES_PER_KWH * self.pue

    def grams_co2e(self, joules: float) -> float:
        return self.facility_kwh(joules) * self.intensity_g_per_kwh

    def cost(self, joules: float) -> float | None:
        if self.price_per_kwh is None:
            return None
        return self.facility_kwh(joules) * self.price_per_kwh


def read_intensity_table(path=TABLE) -> dict[str, dict]:
    """Region code -> row of the shipped table; '#' lines are its citation header."""
    with open(path, newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        table = {}
        for row in rows:
            row["intensity_g_per_kwh"] = float(row["intensity_g_per_kwh"])
            table[row["region"]] = row
    return table


def carbon_model(settings: dict, table_path=TABLE) -> CarbonModel:
    """The carbon model of config `energy.carbon`, its schema defaults filled in (pue, currency)."""
    pue = settings["pue"]
    if pue < 1.0:
        raise CarbonSettingsError(f"energy.carbon.pue: {pue} is below 1; PUE is facility energy / IT energy")
    if "intensity_g_per_kwh" in settings and "region" in settings:
        raise CarbonSettingsError("energy.carbon: set either region or intensity_g_per_kwh, not both")
    if "intensity_g_per_kwh" in settings:
        intensity = settings["intensity_g_per_kwh"]
        source = settings.get("intensity_source", "energy.carbon.intensity_g_per_kwh (config)")
    else:
        region = settings.get("region", DEFAULT_REGION)
        table = read_intensity_table(table_path)
        if region not in table:
            raise CarbonSettingsError(
                f"energy.carbon.region: unknown region {region!r}; use one of {sorted(table)} "
                f"(see {Path(table_path).name}) or set energy.carbon.intensity_g_per_kwh"
            )
        row = table[region]
        intensity = row["intensity_g_per_kwh"]
        year = f", {row['data_year']}" if row["data_year"] else ""
        source = f"{region} ({row['name']}{year}): {row['source']}, via Green Algorithms v2.2"
    return CarbonModel(
        intensity_g_per_kwh=intensity,
        pue=pue,
        intensity_source=source,
        price_per_kwh=settings.get("price_per_kwh"),
        currency=settings["currency"],
    )
