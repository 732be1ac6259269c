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
    threads: 2
    resources:
        measured=1,
    params:
        evaluation=config["evaluation"],
        energy=config["energy"],
    script:
        "../scripts/evaluate_model.py"
