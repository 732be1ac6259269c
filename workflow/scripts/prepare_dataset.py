# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.stages import prepare_dataset, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    prepare_dataset(
        snakemake.params.dataset,
        snakemake.params.cleaning,
        snakemake.params.energy,
        snakemake.output.splits,
        snakemake.output.facts,
        snakemake.output.rejected,
        snakemake.output.energy,
    )
