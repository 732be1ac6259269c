"""The measurement boundary: what a record's joules cover, part by part, and what they leave out.

MLPerf Power states what its joules include; every joulebench record does too (`boundary`), and
the report refuses to let two figures of different boundaries pass as like for like: comparisons
across boundaries are marked, as comparisons across devices are. Torch-free: the report imports it.
"""

# What no record's joules include, whatever was metered: the boundary's outside.
OUTSIDE_THE_BOUNDARY = (
    "power supply and voltage-regulator losses",
    "fans, storage and network",
    "other GPUs and devices of the host that the rule did not compute on",
    "cooling and facility overhead (PUE enters only the carbon figure, at aggregation)",
)
# What each part of a window's total covers, by part name without its index.
PART_COVERS = {
    "gpu": "the GPU board, as NVML counts it",
    "cpu": "the CPU package, as RAPL counts it (all cores, whoever uses them)",
    "dram": "the DRAM of the package, as RAPL counts it",
    "cpu:estimate": "the CPU: this rule's CPU time x watts per core (Green Algorithms), no idle draw",
    "dram:estimate": "memory: peak resident memory x watts per GB (Green Algorithms), no idle draw",
    "gpu:estimate": "the GPU: wall time x usage x board power x slice share (Green Algorithms)",
}


def energy_boundary(parts: list[dict], facts: dict) -> dict:
    """What a record's joules cover, part by part, and what they leave out. `id` is the covered
    parts joined (`cpu:estimate+dram:estimate+gpu`): two figures compare like for like only
    where their ids are equal. A Grace superchip's GPU part covers the module."""
    covered = {}
    for part in parts:
        kind = part["part"].split("/")[-1].rstrip("0123456789")  # a node's prefix left off
        scope = facts.get(part["part"], {}).get("scope")
        covered[kind] = f"the {scope}, as NVML counts it" if scope else PART_COVERS[kind]
    return {
        "id": "+".join(sorted(covered)),
        "covers": [f"{kind}: {text}" for kind, text in sorted(covered.items())],
        "excludes": list(OUTSIDE_THE_BOUNDARY),
    }


def pipeline_boundary(records) -> str:
    """The boundary id of several records together (a model's lineage): every part any covers."""
    return "+".join(sorted({kind for record in records for kind in boundary_id(record).split("+") if kind}))


def boundary_id(record: dict) -> str:
    """A record's boundary id; derived from its parts where it predates the field."""
    if "boundary" in record:
        return record["boundary"]["id"]
    return "+".join(
        sorted({part["part"].split("/")[-1].rstrip("0123456789") for part in record.get("parts", [])})
    )
