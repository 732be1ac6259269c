# The idle baseline: the devices the jobs compute on (the CPU packages and the accelerator),
# measured doing nothing, so the report can give each rule's dynamic energy (total - idle power x
# wall time) beside its total. Runs first (priority) and, locally, alone: it takes every core, the
# `measured` slot and the `gpu` slot, so no other job runs during it. Under SLURM it is one job on
# one node and GPU: the report subtracts it only from records of that host whose every metered
# device it measured, and names the reason for every other record (joulebench.report.columns).
rule measure_idle_power:
    output:
        idle=IDLE_POWER,
    log:
        "logs/measure_idle_power.log",
    benchmark:
        "benchmarks/measure_idle_power.tsv"
    priority: 100
    conda:
        "../../envs/torch.yaml"
    threads: every_core
    resources:
        measured=1,
        gpu=1,
    params:
        seconds=IDLE_SECONDS,
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/measure_idle_power.py"
