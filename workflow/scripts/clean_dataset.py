# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.stages import clean_dataset, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    clean_dataset(
        snakemake.input.splits,
        snakemake.input.facts,
        snakemake.input.rejected,
        snakemake.params.cleaning,
        snakemake.params.energy,
        dict(snakemake.output.items()),
    )
