# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from pathlib import Path

    from joulebench.stages import compare_inference, start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    compare_inference(
        snakemake.input.splits,
        {variant: Path(snakemake.input[f"model_{variant}"]).parent for variant in snakemake.params.variants},
        snakemake.params.evaluation,
        snakemake.params.energy,
        int(snakemake.wildcards.seed),
        snakemake.output.rounds,
        snakemake.output.energy,
    )
