# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from pathlib import Path

    from joulebench.stages import evaluate_variant, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    evaluate_variant(
        snakemake.input.splits,
        Path(snakemake.input.model).parent,
        snakemake.params.evaluation,
        snakemake.params.energy,
        snakemake.output.metrics,
        snakemake.output.energy,
    )
