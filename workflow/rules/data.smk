rule prepare_dataset:
    output:
        **prepared_files("results/data/{dataset}/raw"),
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        measured=1,
    params:
        dataset=config["dataset"],
        skip_unusable=config["cleaning"]["enabled"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/prepare_dataset.py"


# Every later rule reads the cleaned splits (results/data/{dataset}/splits.npz).
rule clean_dataset:
    input:
        splits="results/data/{dataset}/raw/splits.npz",
        facts="results/data/{dataset}/raw/dataset.json",
        rejected="results/data/{dataset}/raw/rejected.csv",
    output:
        splits="results/data/{dataset}/splits.npz",
        facts="results/data/{dataset}/dataset.json",
        report="results/data/{dataset}/cleaning_report.json",
        removed="results/data/{dataset}/removed.csv",
        lookalikes="results/data/{dataset}/lookalikes.csv",
        energy="results/data/{dataset}/energy.json",
    log:
        "logs/clean_dataset/{dataset}.log",
    benchmark:
        "benchmarks/clean_dataset/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    # Crop hashes are computed in this many threads.
    threads: 2
    resources:
        measured=1,
    params:
        cleaning=config["cleaning"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/clean_dataset.py"


rule sample_dataset:
    input:
        splits="results/data/{dataset}/splits.npz",
        facts="results/data/{dataset}/dataset.json",
    output:
        splits=f"{SUBSET_DIR}/splits.npz",
        summary=f"{SUBSET_DIR}/subset.json",
        energy=f"{SUBSET_DIR}/energy.json",
    log:
        "logs/sample_dataset/{dataset}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/sample_dataset/{dataset}/{variant}/seed{seed}.tsv"
    wildcard_constraints:
        variant=variant_names("subset"),
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        measured=1,
        gpu=sampling_gpus,
    params:
        variant=variant_settings,
        training=config["training"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/sample_dataset.py"


rule plot_augmentation:
    input:
        splits="results/data/{dataset}/splits.npz",
    output:
        png=report(
            "results/data/{dataset}/augmentation.png",
            category="Data",
            caption="../report/augmentation.rst",
        ),
    log:
        "logs/plot_augmentation/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    resources:
        # Not metered, but its CPU work would share the host with a measured job's window (it
        # did: the first train_model job's epochs took twice as long, flagged busy_host).
        measured=1,
    params:
        transforms=config["augmentation"]["transforms"],
        samples=config["augmentation"]["figure_samples"],
    script:
        "../scripts/plot_augmentation.py"


rule augment_dataset:
    input:
        splits="results/data/{dataset}/splits.npz",
    output:
        splits="results/data/{dataset}/augmented/splits.npz",
        energy="results/data/{dataset}/augmented/energy.json",
    log:
        "logs/augment_dataset/{dataset}.log",
    benchmark:
        "benchmarks/augment_dataset/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        measured=1,
    params:
        transforms=config["augmentation"]["transforms"],
        copies=config["augmentation"]["materialize_copies"],
        seed=config["dataset"]["split_seed"],
        estimate=config["energy"]["estimate"],
    script:
        "../scripts/augment_dataset.py"
