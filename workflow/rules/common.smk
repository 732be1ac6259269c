import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# The package beside this file, wherever the workflow runs from: workflow.basedir is the main
# Snakefile's folder, which is another workflow's where this one is used as a module.
SCRIPTS = Path(str(workflow.current_basedir)).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from joulebench import variants  # noqa: E402
from joulebench.data.prepared import prepared_files  # noqa: E402
from joulebench.report import figure_registry  # noqa: E402
from joulebench.run import warm_worker  # noqa: E402
from joulebench.config import check_config, idle_baseline_seconds, model_entries, schema_error  # noqa: E402

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as error:
    # Snakemake's message appends the whole schema and config; this one names the key.
    raise schema_error(error) from None
check_config(config)

DATASET = config["dataset"]["name"]
VARIANTS = config["variants"]
MODELS = model_entries(config["models"])
MODEL_DIR = "results/models/{dataset}/{model}/{variant}/seed{seed}"
EVAL_DIR = "results/eval/{dataset}/{model}/{variant}/seed{seed}"
COMPARE_DIR = "results/compare/{dataset}/{model}/seed{seed}"
REPORT_DIR = "results/report"
SUBSET_DIR = "results/data/{dataset}/subsets/{variant}/seed{seed}"


def variant_names(*techniques):
    """Regex alternation of the variants made by these techniques ("train" is the baseline's)."""
    return "|".join(variants.made_by(VARIANTS, *techniques)) or "(?!)"


wildcard_constraints:
    dataset=DATASET,
    model="|".join(MODELS),
    seed=r"\d+",


def parent_model(wildcards):
    """Model files of the variant this one is made from."""
    directory = MODEL_DIR.format(**{**wildcards, "variant": variants.parent(VARIANTS, wildcards.variant)})
    return {"model": f"{directory}/model.pt", "recipe": f"{directory}/model.json"}


def training_splits(wildcards):
    """The splits a from-scratch training reads: a subset variant's own, else the cleaned ones."""
    if variants.technique(VARIANTS, wildcards.variant) == "subset":
        return f"{SUBSET_DIR}/splits.npz".format(**wildcards)
    return f"results/data/{wildcards.dataset}/splits.npz"


def data_energy_records(variant, seed):
    """Energy records of the data work a model depends on: preparation, cleaning and, where its
    lineage starts at a subset variant, that subset's sampling (with its proxy run)."""
    records = [
        f"results/data/{DATASET}/raw/energy.json",
        f"results/data/{DATASET}/energy.json",
    ]
    subset = variants.subset_source(VARIANTS, variant)
    if subset:
        keys = dict(dataset=DATASET, variant=subset, seed=seed)
        records.append(f"{SUBSET_DIR}/energy.json".format(**keys))
    return records


def compared_models(wildcards):
    """Every variant's model of one model and seed, for the interleaved inference comparison."""
    keys = dict(dataset=wildcards.dataset, model=wildcards.model, seed=wildcards.seed)
    files = {}
    for variant in variants.names(VARIANTS):
        directory = MODEL_DIR.format(**keys, variant=variant)
        files |= {f"model_{variant}": f"{directory}/model.pt", f"recipe_{variant}": f"{directory}/model.json"}
    return files


def variant_settings(wildcards):
    return VARIANTS.get(wildcards.variant, {})


def pretrained_weights(wildcards):
    """The model's weights settings, for a finetune variant only (changing them reruns just those)."""
    if variants.technique(VARIANTS, wildcards.variant) == "finetune":
        return MODELS[wildcards.model]
    return {}


def training_threads(wildcards):
    """Cores train_model reserves: a threads variant's own count, one per process of a
    data_parallel variant, else 2 (capped by --cores)."""
    variant = VARIANTS.get(wildcards.variant, {})
    return variant.get("threads", variant.get("processes", 2))


def training_tasks(wildcards):
    """SLURM tasks of train_model: a data_parallel variant's processes; None (the resource is
    left out, so every other variant is submitted as a single task) for every other variant."""
    return VARIANTS.get(wildcards.variant, {}).get("processes")


# GPUs per job. Each rule that computes on the accelerator (joulebench.devices.accelerator, placed
# by the stages modules) asks for the GPUs it computes on, and a job that computes on the CPU asks
# for none. Under SLURM the plugin turns `gpu` into sbatch --gpus (a count of 0 adds no flag);
# locally profiles/default's `gpu: 1` caps every request at its one slot, so no two GPU jobs share
# the device.


def training_gpus(wildcards):
    """GPUs of a train_model job: one per process of a data_parallel variant (NCCL needs a GPU
    per rank), none for a variant pinned to the CPU, else one."""
    variant = VARIANTS.get(wildcards.variant, {})
    if "processes" in variant:
        return variant["processes"]
    return int(variants.on_accelerator(VARIANTS, wildcards.variant))


def fine_tuning_gpus(wildcards):
    """GPUs of a distill_model or prune_model job: one, unless its lineage is pinned to the CPU
    (the student trains, the pruned model fine-tunes, where the parent was made)."""
    return int(variants.on_accelerator(VARIANTS, wildcards.variant))


def quantization_gpus(wildcards):
    """GPUs of a quantize_model job: int8_qat fine-tunes where its parent was made; int8_dynamic
    and int8_static run on the CPU kernels they target."""
    qat = VARIANTS[wildcards.variant]["method"] == "int8_qat"
    return int(qat and variants.on_accelerator(VARIANTS, wildcards.variant))


def sampling_gpus(wildcards):
    """GPUs of a sample_dataset job: the el2n proxy run trains where the subset variant is
    pinned, else on the accelerator; random and stratified sampling run on the CPU."""
    proxy_run = VARIANTS[wildcards.variant]["method"] not in ("random", "stratified")
    return int(proxy_run and variants.on_accelerator(VARIANTS, wildcards.variant))


def inference_gpus(wildcards):
    """GPUs of an evaluate_model job: a float model infers on the accelerator unless its lineage
    is pinned to the CPU; an int8 model on the CPU kernels it was made for."""
    variant = wildcards.variant
    return int(variants.on_accelerator(VARIANTS, variant) and not variants.is_int8(VARIANTS, variant))


def training_tasks_per_gpu(wildcards):
    """SLURM tasks per GPU of a data_parallel variant: one. With GPUs the plugin turns `tasks`
    into --ntasks-per-gpu, which would give N tasks to each of the N GPUs; None elsewhere."""
    return 1 if training_tasks(wildcards) else None


def training_cpus_per_task(wildcards, threads):
    """SLURM CPUs per task of a data_parallel variant: the job's threads shared out over its
    processes; None (the plugin's default: threads) for every other variant."""
    tasks = training_tasks(wildcards)
    return max(1, threads // tasks) if tasks else None


def report_entries():
    """Every (model, variant, seed) with the files the report reads for it."""
    entries = []
    for model in MODELS:
        for variant in variants.names(VARIANTS):
            for seed in config["seeds"]:
                keys = dict(dataset=DATASET, model=model, variant=variant, seed=seed)
                entries.append(
                    {
                        **keys,
                        "metrics": f"{EVAL_DIR}/metrics.json".format(**keys),
                        "energy": f"{MODEL_DIR}/energy.json".format(**keys),
                        "history": f"{MODEL_DIR}/history.csv".format(**keys),
                        "eval_energy": f"{EVAL_DIR}/energy.json".format(**keys),
                        "compare": f"{COMPARE_DIR}/rounds.csv".format(**keys),
                        "compare_energy": f"{COMPARE_DIR}/energy.json".format(**keys),
                        "data_energy": data_energy_records(variant, seed),
                    }
                )
    return entries


def diversity_inputs():
    """The data reports whose diversity the report prints: cleaning (raw and cleaned training
    data) and each subset variant's sampling (cleaned and sampled), per seed."""
    paths = [f"results/data/{DATASET}/cleaning_report.json"]
    for variant in variants.made_by(VARIANTS, "subset"):
        for seed in config["seeds"]:
            paths.append(f"{SUBSET_DIR}/subset.json".format(dataset=DATASET, variant=variant, seed=seed))
    return paths


def report_inputs(kind):
    """The files of one kind the report reads, each once (a comparison serves every variant)."""
    return list(dict.fromkeys(entry[kind] for entry in report_entries()))


def data_energy_inputs():
    return sorted({path for entry in report_entries() for path in entry["data_energy"]})


def report_figures():
    """The report's figures (joulebench.report.figure_registry) as named outputs: figure name -> [its PDF,
    its PNG]. The package draws each figure by its name into these files; PNGs go into the HTML
    report under their categories, with their captions (workflow/report/<name>.rst) and labels."""
    files = {}
    for name, (pdf, png) in figure_registry.figure_files(REPORT_DIR).items():
        figure = figure_registry.FIGURES[name]
        caption = f"../report/{name}.rst"
        files[name] = [pdf, report(png, category=figure.category, caption=caption, labels=figure.labels())]
    return files


def data_outputs():
    """Data-stage files beyond what training needs: the cleaning report, augmentation outputs."""
    outputs = [f"results/data/{DATASET}/cleaning_report.json"]
    if config["augmentation"]["transforms"]:
        outputs.append(f"results/data/{DATASET}/augmentation.png")
        if config["augmentation"]["materialize_copies"] > 0:
            outputs.append(f"results/data/{DATASET}/augmented/splits.npz")
    return outputs


def report_outputs():
    return [
        f"{REPORT_DIR}/results.csv",
        f"{REPORT_DIR}/summary.md",
        *[pdf for pdf, _png in report_figures().values()],
    ]


IDLE_POWER = "results/energy/idle_power.json"


# energy.idle_baseline_seconds, with `auto` resolved on this host (on where NVML or RAPL exists).
IDLE_SECONDS = idle_baseline_seconds(config["energy"]["idle_baseline_seconds"])


def every_core(wildcards):
    """All the cores of the run, asked when the job is scheduled: `threads: workflow.cores` would
    be read while parsing, where commands without --cores (--unlock, --report) have none."""
    return workflow.cores


def idle_baseline(wildcards):
    """The idle-power record, where energy.idle_baseline_seconds asks for one."""
    if IDLE_SECONDS > 0:
        return {"idle": IDLE_POWER}
    return {}


# Jobs of a local run on a host without a GPU fork from one warm worker that has imported torch and
# the stages, instead of each importing them (joulebench.run.warm_worker); JOULEBENCH_WARM=0 switches it off.
# SLURM jobs, and every job on a host with a GPU, start in their own interpreters.
WARM_WORKER = {}


onstart:
    if workflow.local_exec:
        WARM_WORKER["process"], started = warm_worker.start(str(SCRIPTS), "logs/warm_worker.log")
        logger.info(started)


onsuccess:
    warm_worker.stop(WARM_WORKER.get("process"))


onerror:
    warm_worker.stop(WARM_WORKER.get("process"))
