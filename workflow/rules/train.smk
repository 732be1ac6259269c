rule train_model:
    input:
        splits="results/data/{dataset}/splits.npz",
        facts="results/data/{dataset}/dataset.json",
    output:
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
        history=f"{MODEL_DIR}/history.csv",
        energy=f"{MODEL_DIR}/energy.json",
    log:
        "logs/train_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/train_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names("train", "precision"),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        measured=1,
    params:
        variant=variant_settings,
        training=config["training"],
        energy=config["energy"],
    script:
        "../scripts/train_model.py"


rule distill_model:
    input:
        unpack(parent_model),
        splits="results/data/{dataset}/splits.npz",
    output:
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
        history=f"{MODEL_DIR}/history.csv",
        energy=f"{MODEL_DIR}/energy.json",
    log:
        "logs/distill_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/distill_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names("distill"),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        measured=1,
    params:
        variant=variant_settings,
        training=config["training"],
        energy=config["energy"],
    script:
        "../scripts/distill_model.py"
