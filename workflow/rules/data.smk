rule prepare_dataset:
    output:
        splits="results/data/{dataset}/splits.npz",
        facts="results/data/{dataset}/dataset.json",
        energy="results/data/{dataset}/energy.json",
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
        energy=config["energy"],
    script:
        "../scripts/prepare_dataset.py"
