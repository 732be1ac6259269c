# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.run.warm import run_in_worker

    run_in_worker()  # in the run's warm worker, where there is one (joulebench.run.warm)
    from joulebench.run.logs import start_rule_logging
    from joulebench.stages import evaluate_variant

    start_rule_logging(snakemake.log[0], snakemake.threads)
    evaluate_variant(
        dict(snakemake.input.items()),
        dict(snakemake.output.items()),
        **dict(snakemake.params.items()),
    )
