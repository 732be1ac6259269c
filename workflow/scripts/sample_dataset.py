# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.stages import sample_dataset, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    sample_dataset(
        snakemake.input.splits,
        snakemake.input.facts,
        snakemake.params.variant,
        snakemake.params.training,
        int(snakemake.wildcards.seed),
        snakemake.params.energy,
        dict(snakemake.output.items()),
    )
