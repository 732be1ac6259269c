# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from pathlib import Path

    from joulebench.stages import distill_variant, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    distill_variant(
        snakemake.input.splits,
        Path(snakemake.input.model).parent,
        snakemake.params.variant,
        snakemake.params.training,
        int(snakemake.wildcards.seed),
        snakemake.params.energy,
        Path(snakemake.output.model).parent,
        snakemake.params.checkpoint,
    )
