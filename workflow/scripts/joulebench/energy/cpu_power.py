"""Power per CPU core for the Green Algorithms estimate, chosen by the host's CPU model.

Green Algorithms (Lannelongue et al., 2021) charges a CPU's time at its thermal design power (TDP)
per core. Its calculator's table, TDP_cpu.csv, ships with joulebench under
shared/green-algorithms/ (SOURCE.md beside it names the repository, commit and licence). A CPU
model the table does not list gets the table's generic 'Any' row, 12 W per core.

Names are matched after dropping what /proc/cpuinfo adds to the table's spelling: vendor and
trademark marks, "CPU", "Processor", "NN-Core", the clock after '@' (and the " 0" Intel puts
before it on first-generation Xeon E5s), spaces and dashes. "EPYC" goes too, because the table
lists one EPYC without it ("AMD 7552"). The rest must be equal, so "Xeon E5-2670 v3" does not take
the row of "Xeon E5-2670".

The table's cores are physical cores; the estimate charges CPU-seconds of logical CPUs, so on a
host with two hardware threads per core, a core whose two threads are both busy is charged twice
its TDP share.
"""

import csv
import functools
import re
from pathlib import Path

TABLE_PARTS = ("shared", "green-algorithms", "TDP_cpu.csv")
GENERIC_ROW = "Any"
_DROPPED = re.compile(r"\((r|tm)\)|(\s0)?\s*@.*$|\b\d+-core\b|\b(intel|amd|epyc|cpu|processor)\b")


def table_path() -> Path:
    """The shipped TDP_cpu.csv: under shared/ of the checkout that holds this package."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent.joinpath(*TABLE_PARTS)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{'/'.join(TABLE_PARTS)} not found above {Path(__file__).resolve().parent}")


def model_key(name: str) -> str:
    """A CPU model name reduced to what the table and /proc/cpuinfo spell alike."""
    return re.sub(r"[^a-z0-9]", "", _DROPPED.sub(" ", name.lower()))


@functools.cache
def tdp_table() -> dict[str, tuple[str, float]]:
    """model_key -> (the table's model name, watts per core); the generic row under its own name."""
    with open(table_path(), newline="") as handle:
        next(handle)  # the units row above the header
        rows = list(csv.DictReader(handle))
    table = {}
    for row in rows:
        model = row["model"].strip()
        key = GENERIC_ROW if model == GENERIC_ROW else model_key(model)
        table[key] = (model, float(row["TDP_per_core"]))
    return table


def watts_per_core(cpu_model: str) -> tuple[float, str]:
    """(watts per core, where the value comes from) for a CPU model name from /proc/cpuinfo."""
    table = tdp_table()
    key = model_key(cpu_model)
    if key and key in table:
        model, watts = table[key]
        return watts, f"Green Algorithms TDP table: {model}"
    return table[GENERIC_ROW][1], f"Green Algorithms generic 'Any' value (model {cpu_model} not in the table)"
