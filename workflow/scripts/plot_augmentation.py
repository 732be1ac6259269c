# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    from stage_adapter import run_stage

    run_stage(snakemake, "joulebench.data.stages:plot_augmentation", warm=False)
