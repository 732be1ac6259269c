rule prune_model:
    input:
        unpack(parent_model),
        splits="results/data/{dataset}/splits.npz",
    output:
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
        history=f"{MODEL_DIR}/history.csv",
        energy=f"{MODEL_DIR}/energy.json",
    log:
        "logs/prune_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/prune_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names("prune"),
    conda:
        "../../envs/compress.yaml"
    threads: 2
    resources:
        measured=1,
        gpu=fine_tuning_gpus,
    params:
        variant=variant_settings,
        training=config["training"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/prune_model.py"


rule quantize_model:
    input:
        unpack(parent_model),
        splits="results/data/{dataset}/splits.npz",
    output:
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
        history=f"{MODEL_DIR}/history.csv",
        energy=f"{MODEL_DIR}/energy.json",
    log:
        "logs/quantize_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/quantize_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names("quantize"),
    conda:
        "../../envs/compress.yaml"
    threads: 2
    resources:
        measured=1,
        gpu=quantization_gpus,
    params:
        variant=variant_settings,
        training=config["training"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/quantize_model.py"
