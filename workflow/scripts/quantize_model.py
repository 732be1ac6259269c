# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from stage_adapter import run_stage

    run_stage(
        snakemake,
        "joulebench.compress.stages:quantize_model",
        # The warm worker sets the method up once for the run (PT2E: Dynamo, traced patterns).
        work=("joulebench.compress.quantize", snakemake.params.variant["method"]),
        seed=int(snakemake.wildcards.seed),
    )
