import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from joulebench.config import check_config  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")
check_config(config)

DATASET = config["dataset"]["name"]
VARIANTS = config["variants"]
MODEL_DIR = "results/models/{dataset}/{model}/{variant}/seed{seed}"
EVAL_DIR = "results/eval/{dataset}/{model}/{variant}/seed{seed}"
REPORT_DIR = "results/report"


def variant_names(*techniques):
    """Regex alternation of the configured variants made by these techniques."""
    names = [name for name, v in VARIANTS.items() if v["technique"] in techniques]
    if "train" in techniques:
        names.append("baseline")
    return "|".join(names) if names else "(?!)"


wildcard_constraints:
    dataset=DATASET,
    model="|".join(config["models"]),
    seed=r"\d+",


def parent_model(wildcards):
    """Model files of the variant this one starts from."""
    parent = VARIANTS[wildcards.variant].get("from", "baseline")
    directory = MODEL_DIR.format(**{**wildcards, "variant": parent})
    return {"model": f"{directory}/model.pt", "recipe": f"{directory}/model.json"}


def variant_settings(wildcards):
    return VARIANTS.get(wildcards.variant, {})


def all_variants():
    return ["baseline", *VARIANTS]


def report_entries():
    """Every (model, variant, seed) with the files the report reads for it."""
    entries = []
    for model in config["models"]:
        for variant in all_variants():
            for seed in config["seeds"]:
                keys = dict(dataset=DATASET, model=model, variant=variant, seed=seed)
                entries.append(
                    {
                        **keys,
                        "metrics": f"{EVAL_DIR}/metrics.json".format(**keys),
                        "energy": f"{MODEL_DIR}/energy.json".format(**keys),
                    }
                )
    return entries


def report_inputs(kind):
    return [entry[kind] for entry in report_entries()]


def report_outputs():
    return [
        f"{REPORT_DIR}/results.csv",
        f"{REPORT_DIR}/summary.md",
        f"{REPORT_DIR}/pareto.png",
        f"{REPORT_DIR}/pareto.pdf",
    ]
