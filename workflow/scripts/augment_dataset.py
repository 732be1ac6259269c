# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.stages import augment_dataset, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    augment_dataset(
        snakemake.input.splits,
        snakemake.params.augmentation,
        snakemake.params.seed,
        snakemake.params.energy,
        snakemake.output.splits,
        snakemake.output.energy,
    )
