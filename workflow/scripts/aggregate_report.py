# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from joulebench.report.aggregate import aggregate_report
    from joulebench.run.logs import start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    aggregate_report(
        dict(snakemake.input.items()),
        dict(snakemake.output.items()),
        **dict(snakemake.params.items()),
    )
