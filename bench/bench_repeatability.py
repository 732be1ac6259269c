"""Repeatability: the same measured rules run k times on the default data; the CV of their joules.

Runs the real workflow on the shipped config reduced to the baseline of seed 0 (data, train_model,
evaluate_model), then forces train_model and evaluate_model to run again, k times in all, each
a fresh job as in a real run. Prints the coefficient of variation (sd / mean) over the k runs of
the training energy and of the inference energy per 1,000 samples, beside the CV of what the
figures are made of (wall time, CPU seconds, test-set passes), the host-speed index of each
training job (joulebench.energy.host_speed) and the other processes' share of the host, so a missed target
says what dominated the variance.

Targets on an idle machine: training energy CV <= 5%; inference energy per 1k samples
CV <= 10% (CPU estimates).

    python bench/bench_repeatability.py [--runs 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAINING_TARGET, INFERENCE_TARGET = 0.05, 0.10


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def one_run(folder: Path, config: dict, force: bool) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import snakemake_command

    extra = ["--forcerun", "train_model", "evaluate_model"] if force else []
    command = snakemake_command(
        folder, config, f"results/eval/digits/{config['models'][0]}/baseline/seed0/metrics.json", *extra
    )
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    model = config["models"][0]
    train = json.loads((folder / f"results/models/digits/{model}/baseline/seed0/energy.json").read_text())
    evaluation = json.loads((folder / f"results/eval/digits/{model}/baseline/seed0/energy.json").read_text())
    metrics = json.loads((folder / f"results/eval/digits/{model}/baseline/seed0/metrics.json").read_text())
    inference = next(w for w in evaluation["windows"] if w["window"] == "inference")
    return {
        "train_j": train["joules"],
        "train_wall_s": train["wall_time_s"],
        "train_cpu_s": train["estimate"]["cpu_seconds"],
        "train_others": train["other_processes_cpu_share"],
        "train_host_speed": train["host_speed"],
        "inference_j_per_1k": metrics["inference_joules_per_1k"],
        "inference_cpu_s_per_pass": inference["estimate"]["cpu_seconds"] / metrics["inference_passes"],
        "inference_wall_s_per_pass": metrics["inference_seconds"] / metrics["inference_passes"],
        "inference_others": inference["other_processes_cpu_share"],
        "source": train["source"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="how many times the measured rules run (k)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["seeds"], config["variants"] = [0], {}
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.runs):
            runs.append(one_run(Path(folder), config, force=index > 0))
            print(f"run {index + 1}/{args.runs}: {json.dumps(runs[-1])}", flush=True)
    column = {key: [run[key] for run in runs] for key in runs[0] if key != "source"}
    print(f"\n{args.runs} runs of train_model + evaluate_model, {runs[0]['source']}:")
    for key in (
        "train_wall_s",
        "train_cpu_s",
        "train_host_speed",
        "inference_wall_s_per_pass",
        "inference_cpu_s_per_pass",
    ):
        print(f"  CV {key:<28} {cv(column[key]):7.2%}")
    others = max(column["train_others"] + column["inference_others"])
    print(f"  other processes' share of the host, largest: {others:.1%}")
    training, inference = cv(column["train_j"]), cv(column["inference_j_per_1k"])
    print(f"training energy CV          {training:7.2%} (target <= {TRAINING_TARGET:.0%})")
    print(f"inference energy per 1k CV  {inference:7.2%} (target <= {INFERENCE_TARGET:.0%})")


if __name__ == "__main__":
    main()
