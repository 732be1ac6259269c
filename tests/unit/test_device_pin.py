"""The device axis without hardware: where a pinned variant computes, which configs are refused,
that a `cuda` pin without a GPU is skipped (never trained on the CPU), and that the report says
on which device every row was made and compared."""

import json

import pandas as pd
import pytest
from snakemake.utils import validate

from conftest import ROOT, figure_files, model_files, tiny_config
from joulebench import devices
from joulebench.config import ConfigError, check_config
from joulebench.evaluate.stages import inference_placement
from joulebench.report import figures
from joulebench.report.aggregate import training_device
from joulebench.report.stats import device_label, paired_differences, summarize
from joulebench.report.summary import devices_markdown
from joulebench.report.verdicts import verdict
from joulebench.train.overrides import needs_gpu, pinned_device
from joulebench.train.stages import train_model

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
GPU = devices.Placement(devices.torch.device("cuda", 0), 0)


def test_the_pin_decides_the_placement_and_unpinned_follows_the_accelerator(monkeypatch):
    monkeypatch.setattr(devices, "accelerator", lambda: GPU)  # a GPU host
    assert devices.placement_on("cpu") == devices.CPU
    assert devices.placement_on("cuda") == GPU
    assert devices.placement_on(None) == GPU
    assert devices.CPU.describe()["device"] == "cpu" and GPU.describe()["device"] == "cuda"
    # A float model infers where its variant was pinned; an int8 one on its CPU kernels.
    assert inference_placement({"device": "cpu"}) == devices.CPU
    assert inference_placement({}) == GPU
    assert inference_placement({"device": "cuda", "quantization": "int8_dynamic"}) == devices.CPU


def test_a_variant_needs_a_gpu_for_a_cuda_pin_or_a_power_limit():
    assert pinned_device({"technique": "device", "device": "cpu"}) == "cpu"
    assert pinned_device({"technique": "precision", "precision": "bf16"}) is None
    assert needs_gpu({"technique": "device", "device": "cuda"})
    assert needs_gpu({"technique": "batch_size", "batch_size": 8, "device": "cuda"})
    assert needs_gpu({"technique": "power_limit", "power_limit_w": 250})
    assert not needs_gpu({"technique": "device", "device": "cpu"})


def _validated(variants: dict) -> dict:
    config = tiny_config(variants=variants, augmentation={"transforms": []})
    validate(config, schema=SCHEMA)
    return config


def test_the_schema_takes_device_on_single_process_from_scratch_variants_only():
    _validated({"cpu": {"technique": "device", "device": "cpu"}})
    _validated({"bf16_cpu": {"technique": "precision", "precision": "bf16", "device": "cpu"}})
    _validated({"bs8_gpu": {"technique": "batch_size", "batch_size": 8, "device": "cuda"}})
    refused = [
        {"technique": "device"},  # the plain recipe must say where
        {"technique": "device", "device": "tpu"},
        {
            "technique": "prune",
            "sparsity": 0.5,
            "finetune_epochs": 1,
            "device": "cpu",
        },  # runs where its parent ran
        {"technique": "data_parallel", "processes": 2, "device": "cpu"},  # its workers place themselves
        {"technique": "power_limit", "power_limit_w": 250, "device": "cpu"},  # always the GPU
    ]
    for variant in refused:
        with pytest.raises(Exception, match="ValidationError|is not valid|required|Additional"):
            _validated({"v": variant})


def test_nothing_can_start_from_a_cuda_pinned_variant():
    config = _validated(
        {
            "gpu": {"technique": "device", "device": "cuda"},
            "prune_gpu": {"technique": "prune", "sparsity": 0.5, "finetune_epochs": 1, "from": "gpu"},
        }
    )
    with pytest.raises(
        ConfigError, match=r"variants.prune_gpu.from: gpu needs a GPU \(device, device: cuda\)"
    ):
        check_config(config)
    # A CPU pin runs everywhere: a pruned child of it is fine (and runs on the CPU too).
    config["variants"]["gpu"]["device"] = "cpu"
    check_config(config)


def test_a_cuda_pin_without_a_gpu_is_skipped_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "accelerator", lambda: devices.CPU)  # a host without a GPU
    variant = {"technique": "device", "device": "cuda"}
    # The splits are never read: the skip comes first.
    inputs = {"splits": "missing.npz", "facts": "missing.json"}
    train_model(inputs, model_files(tmp_path), "small_cnn", variant, {}, 0, {})
    for name in ("model.json", "training.json", "energy.json"):
        assert json.loads((tmp_path / name).read_text()) == {
            "skipped": "no GPU on this host",
            "rule": "train_model",
        }


# --- the report --------------------------------------------------------------------------------


def test_the_training_device_comes_from_the_records_placement():
    on_gpu = {"placement": {"gpu_cuda_index": 0}, "gpu": {"name": "NVIDIA H200"}, "cpu_model": "Xeon"}
    on_cpu = {"placement": {"gpu_cuda_index": None}, "gpu": {"name": None}, "cpu_model": "Xeon"}
    assert training_device(on_gpu) == ("cuda", "NVIDIA H200")
    assert training_device(on_cpu) == ("cpu", "Xeon")
    assert training_device({"placement": {"gpu_cuda_index": 1}, "gpu": {"name": None}}) == ("cuda", "GPU 1")
    assert (
        device_label("cpu", "Xeon") == "CPU (Xeon)" and device_label("cuda", "NVIDIA H200") == "NVIDIA H200"
    )


# (variant, seed) -> (accuracy, energy to produce J, inference J per 1k, device)
CROSS = {
    ("baseline", 0): (0.95, 100.0, 4.0, "cuda"),
    ("baseline", 1): (0.96, 110.0, 4.2, "cuda"),
    ("cpu", 0): (0.95, 300.0, 9.0, "cpu"),
    ("cpu", 1): (0.96, 320.0, 9.4, "cpu"),
    ("bf16", 0): (0.94, 80.0, 3.0, "cuda"),
    ("bf16", 1): (0.95, 85.0, 3.2, "cuda"),
}
NAMES = {"cuda": "NVIDIA H200", "cpu": "Intel Xeon"}


@pytest.fixture
def cross_device_table():
    rows = []
    for (variant, seed), (accuracy, energy, inference, device) in CROSS.items():
        rows.append(
            {
                "dataset": "digits", "model": "small_cnn", "variant": variant, "seed": seed,
                "technique": {"baseline": "baseline", "cpu": "device"}.get(variant, "precision"),
                "parent": None, "precision": "fp32", "test_accuracy": accuracy,
                "pipeline_energy_j": energy, "own_energy_j": energy, "pipeline_wall_time_s": energy / 10,
                "energy_train_j": energy, "energy_data_j": 0.0, "energy_compress_j": 0.0,
                "energy_evaluate_j": 1.0, "inference_joules_per_1k": inference, "size_bytes": 4000,
                "macs": 50000, "pipeline_energy_measured": True, "pipeline_busy_host": False,
                "inference_busy_host": False, "inference_energy_source": "nvml-counter",
                "pipeline_energy_sources": "nvml-counter", "training_device": device,
                "training_device_name": NAMES[device], "inference_device": device,
                "inference_device_name": NAMES[device],
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_verdicts_and_decisions_say_when_a_comparison_crosses_devices(cross_device_table):
    summary = summarize(cross_device_table).set_index("variant")
    assert summary.loc["cpu", "training_device"] == "cpu"
    assert summary.loc["cpu", "training_device_name"] == "Intel Xeon"
    assert summary.loc["baseline", "inference_device"] == "cuda"
    pairs = paired_differences(cross_device_table).set_index("variant")
    assert pairs.loc["cpu", "training_devices"] == "cuda vs cpu"
    assert pairs.loc["bf16", "training_devices"] == "cuda"
    text = verdict(pairs.loc["cpu"].to_dict() | {"variant": "cpu"})
    assert "(across devices: trained on cuda vs cpu)" in text
    assert "(not like for like: inference on cuda vs cpu)" in text
    assert "across devices" not in verdict(pairs.loc["bf16"].to_dict() | {"variant": "bf16"})
    [line] = devices_markdown(summary.reset_index())
    assert line == (
        "- **Across devices**: the decisions compare variants trained on different devices "
        "(CPU (Intel Xeon): small_cnn/cpu; NVIDIA H200: small_cnn/baseline, small_cnn/bf16)."
    )
    assert devices_markdown(summary[summary.index != "cpu"].reset_index()) == []


def _legend_texts(figure_base):
    """The legend labels matplotlib drew, read back from the figure before it is saved."""
    return [text.get_text() for legend in figure_base.legends for text in legend.get_texts()]


def test_every_figure_marks_the_device_of_each_row(cross_device_table, tmp_path, monkeypatch):
    summary = summarize(cross_device_table)
    _, markers, _ = figures._looks(summary)
    # One model: marker shape tells the devices apart.
    assert markers[("small_cnn", "cpu")] != markers[("small_cnn", "baseline")]
    assert markers[("small_cnn", "bf16")] == markers[("small_cnn", "baseline")]
    legends = {}
    save = figures.save_figure

    def keep_legend(fig, files):
        legends[files[0].stem] = _legend_texts(fig) + [
            t.get_text() for ax in fig.axes for t in ax.get_yticklabels()
        ]
        return save(fig, files)

    monkeypatch.setattr(figures, "save_figure", keep_legend)
    histories = pd.DataFrame(
        [
            {"model": "small_cnn", "variant": v, "seed": s, "epoch": e, "val_accuracy": a - 0.1 / e,
             "energy_from_data_j": j * e / 2, "measured": True}
            for (v, s), (a, j, _, _) in CROSS.items() for e in (1, 2)
        ]
    )  # fmt: skip
    paths = figures.write_figures(summary, histories, figure_files(tmp_path))
    assert len(paths) == 14
    for name, texts in legends.items():
        if name == "energy_by_stage":  # bars have no markers: each bar's label names its device
            assert "cpu (n=2) [CPU]" in texts and "baseline (n=2) [GPU]" in texts
            assert {"[CPU] trained on CPU (Intel Xeon)", "[GPU] trained on NVIDIA H200"} <= set(texts)
        else:
            verb = (
                "inferred"
                if name in {"accuracy_vs_inference_energy", "accuracy_vs_size", "accuracy_vs_macs"}
                else "trained"
            )
            assert {f"{verb} on CPU (Intel Xeon)", f"{verb} on NVIDIA H200"} <= set(texts), name
    # Every row on one device: one legend line says which.
    legends.clear()
    one = summary[summary["variant"] != "cpu"]
    figures.plot_time_vs_energy(one, [tmp_path / "one_device.pdf", tmp_path / "one_device.png"])
    assert "all trained on NVIDIA H200" in legends["one_device"]


# --- stages that compute on the CPU on a GPU host too ------------------------------------------

# SIMULATED GPU host: the accelerator is GPU 0, whose stand-in computes on the CPU (no CUDA here).
SIMULATED_GPU = devices.Placement(devices.torch.device("cpu"), 0)


def test_the_dataset_is_prepared_on_the_cpu_on_a_gpu_host(tmp_path, monkeypatch):
    from joulebench.config import resolved_config
    from joulebench.data.stages import prepare_dataset
    from joulebench.energy import contention

    # Whichever way a stage asks for the accelerator, it finds one.
    monkeypatch.setattr(devices, "accelerator", lambda: SIMULATED_GPU)
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(contention, "QUIET_MAX_WAIT_S", 0.0)  # the wait for a quiet host: not tested here
    config = resolved_config()
    # Were the GPU charged, its board power is known (it cannot be read here).
    estimate = {**config["energy"]["estimate"], "gpu_power_w": 700.0}
    names = {
        "splits": "splits.npz",
        "facts": "dataset.json",
        "rejected": "rejected.csv",
        "energy": "energy.json",
    }
    outputs = {key: tmp_path / name for key, name in names.items()}
    prepare_dataset({}, outputs, config["dataset"], True, estimate)
    record = json.loads(outputs["energy"].read_text())
    assert record["placement"] == devices.CPU.describe()
    assert record["estimate"]["gpu_joules"] is None and not record["gpu"]["used"]


def test_post_training_int8_is_made_on_the_cpu_and_qat_where_its_parent_was(monkeypatch):
    from joulebench.compress.stages import quantization_placement

    monkeypatch.setattr(devices, "accelerator", lambda: GPU)  # a GPU host
    for method in ("int8_dynamic", "int8_static"):
        assert quantization_placement(method, {}) == devices.CPU
        assert quantization_placement(method, {"device": "cuda"}) == devices.CPU
    assert quantization_placement("int8_qat", {}) == GPU
    assert quantization_placement("int8_qat", {"device": "cpu"}) == devices.CPU
