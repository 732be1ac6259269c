# The idle baseline: the machine's devices measured doing nothing, so the report can give each
# rule's dynamic energy (total - idle power x wall time) beside its total. Runs first (priority)
# and alone: it takes every core and the `measured` slot, so no other job runs during it.
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
    params:
        seconds=IDLE_SECONDS,
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/measure_idle_power.py"
