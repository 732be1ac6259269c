# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from pathlib import Path

    from joulebench.stages import aggregate_results, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    aggregate_results(
        snakemake.params.entries,
        snakemake.params.variants,
        snakemake.input.data_energy,
        Path(snakemake.output.table).parent,
        snakemake.params.energy,
        snakemake.input.get("idle"),
        snakemake.params.report,
        snakemake.input.diversity,
    )
