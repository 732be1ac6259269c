# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from pathlib import Path

    from joulebench.stages import start_rule_logging, train_variant

    start_rule_logging(snakemake.log[0], snakemake.threads)
    train_variant(
        snakemake.input.splits,
        snakemake.input.facts,
        snakemake.wildcards.model,
        snakemake.params.variant,
        snakemake.params.training,
        int(snakemake.wildcards.seed),
        snakemake.params.energy,
        Path(snakemake.output.model).parent,
        snakemake.params.checkpoint,
        snakemake.params.augmentation,
        snakemake.params.pretrained,
    )
