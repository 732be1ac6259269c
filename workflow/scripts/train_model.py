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
)
