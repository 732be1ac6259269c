"""Power per CPU core for the Green Algorithms estimate, chosen by the host's CPU model.

Green Algorithms (Lannelongue et al., 2021) charges a CPU's time at its thermal design power (TDP)
per core. The TDP comes from CodeCarbon's kept table of CPU models (codecarbon/data/hardware/
cpu_power.csv, installed with the codecarbon package; read as a file, CodeCarbon itself is never
imported). Its TDP is the whole package's, so the power per core is TDP / the cores of one package
as /proc/cpuinfo counts them ("cpu cores"). Inside a virtual machine that count is the VM's, not
the CPU's (a 2-vCPU slice of a 64-core EPYC would get a 32x share), so there, and for any model the
table does not list, the estimate takes Green Algorithms' generic value, 12 W per core, and its
source says why.

Names are matched exactly after dropping what /proc/cpuinfo adds to the table's spelling (the
clock after '@', "(R)", "(TM)", "CPU", "Processor", "NN-Core", spaces and dashes): a wrong row
is worse than the generic value, so no fuzzy matching.
"""

import csv
import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

GENERIC_W = 12.0
TABLE = ("data", "hardware", "cpu_power.csv")
_DROPPED = re.compile(r"\((r|tm)\)|(\s0)?\s*@.*$|\b\d+-core\b|\b(cpu|processor)\b")


def table_path() -> Path | None:
    """CodeCarbon's cpu_power.csv where codecarbon is installed (found without importing it)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*TABLE)
    return path if path.is_file() else None


def model_key(name: str) -> str:
    """A CPU model name reduced to what the table and /proc/cpuinfo spell alike."""
    return re.sub(r"[^a-z0-9]", "", _DROPPED.sub(" ", name.lower()))


@functools.cache
def tdp_table() -> dict[str, tuple[str, float]]:
    """model_key -> (the table's model name, package TDP in watts); empty without the table."""
    path = table_path()
    if path is None:
        return {}
    table = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                table[model_key(row["Name"])] = (row["Name"].strip(), float(row["TDP"]))
            except ValueError:  # a few rows hold no number ("27.29.5"): no TDP is better than a guess
                continue
    return table


def table_name() -> str:
    version = importlib.metadata.version("codecarbon") if table_path() else "not installed"
    return f"CodeCarbon {version} cpu_power.csv"


def package_cores(cpuinfo: str) -> tuple[int | None, bool]:
    """(cores of one CPU package, whether the host is a virtual machine) from /proc/cpuinfo's text."""
    cores = re.search(r"^cpu cores\s*:\s*(\d+)", cpuinfo, re.MULTILINE)
    virtual = re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.MULTILINE) is not None
    return (int(cores.group(1)) if cores else None), virtual


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def watts_per_core(cpu_model: str, cpuinfo: str | None = None) -> tuple[float, str]:
    """(watts per core, where the value comes from) for a CPU model name from /proc/cpuinfo;
    `cpuinfo`: that file's text (this host's where not given)."""
    row = tdp_table().get(model_key(cpu_model)) if model_key(cpu_model) else None
    if row is None:
        return (
            GENERIC_W,
            f"Green Algorithms generic 12 W per core (model {cpu_model!r} not in {table_name()})",
        )
    model, tdp = row
    cores, virtual = package_cores(read_cpuinfo() if cpuinfo is None else cpuinfo)
    if virtual or not cores:
        why = "a virtual machine's core count is not the CPU's" if virtual else "no core count"
        return (
            GENERIC_W,
            f"Green Algorithms generic 12 W per core ({model} is in {table_name()}, {tdp:g} W, but {why})",
        )
    return tdp / cores, f"{table_name()}: {model} ({tdp:g} W / {cores} cores)"
