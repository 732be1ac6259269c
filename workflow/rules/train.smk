# Per-epoch training checkpoints. Deliberately not a declared output: Snakemake deletes the
# outputs of a failed job, and the checkpoint must survive a killed job for its rerun to resume.
CHECKPOINT = "results/checkpoints/{dataset}/{model}/{variant}/seed{seed}/last.pt"


rule train_model:
    input:
        splits=training_splits,
        facts="results/data/{dataset}/dataset.json",
    output:
        model=f"{MODEL_DIR}/model.pt",
        recipe=f"{MODEL_DIR}/model.json",
        history=f"{MODEL_DIR}/history.csv",
        energy=f"{MODEL_DIR}/energy.json",
        training=f"{MODEL_DIR}/training.json",
    log:
        "logs/train_model/{dataset}/{model}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/train_model/{dataset}/{model}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names(*variants.FROM_SCRATCH),
    conda:
        "../../envs/torch.yaml"
    threads: training_threads
    resources:
        measured=1,
        # Under SLURM (profiles/slurm) a data_parallel variant's job gets one task and one GPU
        # per process.
        gpu=training_gpus,
        tasks=training_tasks,
        tasks_per_gpu=training_tasks_per_gpu,
        cpus_per_task=training_cpus_per_task,
    params:
        variant=variant_settings,
        training=config["training"],
        estimate=config["energy"]["estimate"],
        checkpoint=CHECKPOINT,
        transforms=config["augmentation"]["transforms"],
        pretrained=pretrained_weights,
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
        training=f"{MODEL_DIR}/training.json",
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
        gpu=fine_tuning_gpus,
    params:
        variant=variant_settings,
        training=config["training"],
        estimate=config["energy"]["estimate"],
        checkpoint=CHECKPOINT,
    script:
        "../scripts/distill_model.py"
