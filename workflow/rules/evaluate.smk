rule evaluate_model:
    input:
        splits="results/data/{dataset}/splits.npz",
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
    output:
        metrics=f"{EVAL_DIR}/metrics.json",
        energy=f"{EVAL_DIR}/energy.json",
    log:
        "logs/evaluate_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    conda:
        "../../envs/compress.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        measured=1,
        gpu=inference_gpus,
    params:
        evaluation=config["evaluation"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/evaluate_model.py"


rule compare_inference:
    input:
        unpack(compared_models),
        splits="results/data/{dataset}/splits.npz",
    output:
        rounds=f"{COMPARE_DIR}/rounds.csv",
        energy=f"{COMPARE_DIR}/energy.json",
    log:
        "logs/compare_inference/{dataset}/{model}/seed{seed}.log",
    benchmark:
        "benchmarks/compare_inference/{dataset}/{model}/seed{seed}.tsv"
    conda:
        "../../envs/compress.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        measured=1,
        # The baseline, always a float model, infers on the accelerator, and the comparison's
        # meter reads it there.
        gpu=1,
    params:
        evaluation=config["evaluation"],
        estimate=config["energy"]["estimate"],
        variants=variants.names(VARIANTS),
    script:
        "../scripts/compare_inference.py"
