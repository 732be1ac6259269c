# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.stages import measure_idle_baseline, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    measure_idle_baseline(snakemake.params.seconds, snakemake.params.energy, snakemake.output.idle)
