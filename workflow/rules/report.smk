rule aggregate_report:
    input:
        unpack(idle_baseline),
        metrics=report_inputs("metrics"),
        energy=report_inputs("energy"),
        history=report_inputs("history"),
        eval_energy=report_inputs("eval_energy"),
        compare=report_inputs("compare"),
        compare_energy=report_inputs("compare_energy"),
        data_energy=f"results/data/{DATASET}/energy.json",
        data_records=data_energy_inputs(),
        diversity=diversity_inputs(),
    output:
        **report_figures(),
        table=f"{REPORT_DIR}/results.csv",
        parquet=f"{REPORT_DIR}/results.parquet",
        summary_table=f"{REPORT_DIR}/summary.csv",
        break_even=f"{REPORT_DIR}/break_even.csv",
        differences=f"{REPORT_DIR}/differences.csv",
        curves=f"{REPORT_DIR}/training_curves.csv",
        diversity_table=f"{REPORT_DIR}/diversity.csv",
        decisions=f"{REPORT_DIR}/decisions.json",
        config=f"{REPORT_DIR}/config.yaml",
        summary=report(
            f"{REPORT_DIR}/summary.md",
            category="Tables",
            caption="../report/summary.rst",
        ),
        markdown=f"{REPORT_DIR}/table.md",
        latex=report(
            f"{REPORT_DIR}/table.tex",
            category="Tables",
            caption="../report/table.rst",
        ),
    log:
        "logs/aggregate_report.log",
    # A light rule: it runs on the submit host under a cluster executor instead of waiting in the
    # queue. Set here, not by name in `localrules:`: a workflow using this one as a module renames it.
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        entries=report_entries(),
        variant_settings=VARIANTS,
        carbon=config["energy"]["carbon"],
        report_settings=config["report"],
        # The resolved config (schema defaults filled in), saved beside the report.
        config=config,
    script:
        "../scripts/aggregate_report.py"
