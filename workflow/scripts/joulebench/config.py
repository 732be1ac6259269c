"""Checks a JSON schema cannot express; run right after schema validation, before any job."""

import copy
import difflib
import re
import textwrap
from pathlib import Path

from joulebench.report.carbon import CarbonSettingsError, carbon_model
from joulebench.variants import lineage_error, made_by

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = ROOT / "config" / "config.yaml"


def resolved_config(config: dict | None = None) -> dict:
    """`config` (default: the shipped config/config.yaml) validated, with the schema's defaults
    filled in: what the rules see. Every default lives in the schema only."""
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = (
        copy.deepcopy(config) if config is not None else yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    )
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as error:
        raise schema_error(error) from None
    return config


class ConfigError(ValueError):
    """A config problem, named by its key, with what to do about it."""


# A schema message quotes the value it rejects, sometimes a whole subschema: cut to this length.
MESSAGE_CHARS = 240
LINE_CHARS = 100


def schema_error(error: Exception) -> Exception:
    """The ConfigError to raise for snakemake.utils.validate's WorkflowError: a few lines naming the
    key, instead of Snakemake's text, which appends the whole schema and config (hundreds of lines).
    `error` itself where it carries no schema violation (an unreadable schema file)."""
    from jsonschema.exceptions import ValidationError

    # Snakemake raises its error while handling jsonschema's, which stays chained to it.
    violation = error
    while violation is not None and not isinstance(violation, ValidationError):
        violation = violation.__cause__ or violation.__context__
    return error if violation is None else ConfigError(schema_error_message(violation))


def schema_error_message(error) -> str:
    """A jsonschema ValidationError as a few lines: the key's path and what is wrong there; for an
    unknown key or value, the closest valid one and the valid keys at that level."""
    from jsonschema.exceptions import best_match

    # In a oneOf/anyOf, the branch the value came closest to says what is wrong with it.
    error = best_match([error])
    path = key_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return unknown_keys_message(error, path)
    lines = [f"{path or 'config'}: {shortened(error.message)}"]
    if error.validator == "enum" and isinstance(error.instance, str):
        choices = [str(choice) for choice in error.validator_value]
        lines += [f"  did you mean {match}?" for match in closest(error.instance, choices)]
    return "\n".join(lines)


def unknown_keys_message(error, path: str) -> str:
    known = list(error.schema.get("properties", {}))
    lines = [f"{path or 'config'}: {shortened(error.message)}"]
    for key in unexpected_keys(error.instance, error.schema):
        matches = closest(str(key), known)
        hint = f"did you mean {join_key(path, matches[0])}?" if matches else "no valid key is close"
        lines.append(f"  {join_key(path, key)}: {hint}")
    where = f"of {path}" if path else "at the top level"
    listed = f"valid keys {where}: {', '.join(known) or 'none'}"
    lines += textwrap.wrap(listed, LINE_CHARS, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def unexpected_keys(instance: dict, schema: dict) -> list:
    known = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [key for key in instance if key not in known and not any(re.search(p, str(key)) for p in patterns)]


def closest(word: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(word, choices, n=1)


def key_path(parts) -> str:
    """training.batch_size, models[1].weights: a config key as the messages name it."""
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else join_key(path, part)
    return path


def join_key(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def shortened(message: str) -> str:
    return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 4] + " ..."


def check_config(config: dict) -> None:
    variants = config["variants"]
    for name, variant in variants.items():
        error = lineage_error(variants, name)
        if error:
            raise ConfigError(error)
        if (
            variant["technique"] == "data_parallel"
            and config["training"]["batch_size"] % variant["processes"]
        ):
            raise ConfigError(
                f"variants.{name}.processes: training.batch_size {config['training']['batch_size']} is "
                f"not a multiple of {variant['processes']} processes; each process trains on an equal "
                "share of every batch, so choose a divisor of the batch size"
            )
    try:
        carbon_model(config["energy"]["carbon"])
    except CarbonSettingsError as error:
        raise ConfigError(str(error)) from None
    dataset = config["dataset"]
    if dataset["source"] != "sklearn-digits" and "root" not in dataset:
        raise ConfigError(f"dataset.root: required for source {dataset['source']!r}; set the local directory")
    if dataset["val_fraction"] + dataset["test_fraction"] >= 0.9:
        raise ConfigError("dataset.val_fraction + dataset.test_fraction must leave at least 10% for training")
    check_augmentation(config["augmentation"], dataset["source"])
    check_models(config["models"], variants, input_shape(dataset))


def model_entries(models: list) -> dict[str, dict]:
    """name -> {weights?, download} of each configured model: a name, or {name, weights, download}."""
    entries = {}
    for item in models:
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = entry.pop("name")
        if name in entries:
            raise ConfigError(f"models: {name} is listed twice")
        entries[name] = {"download": False, **entry}
    return entries


# Image shapes (channels, height, width) known before the data stage runs; imagefolder trees are
# read by prepare_dataset, so train_model checks their models instead.
TORCHVISION_SHAPES = {"CIFAR10": (3, 32, 32), "CIFAR100": (3, 32, 32), "SVHN": (3, 32, 32)}
TORCHVISION_SHAPES |= {"MNIST": (1, 28, 28), "FashionMNIST": (1, 28, 28)}


def input_shape(dataset: dict) -> tuple[int, int, int] | None:
    if dataset["source"] == "sklearn-digits":
        return (1, 8, 8)
    if dataset["source"] == "torchvision":
        return TORCHVISION_SHAPES.get(dataset["name"])
    return None


def check_models(models: list, variants: dict, shape: tuple[int, int, int] | None) -> None:
    """Every model exists, takes the dataset's input size, and has usable weights where a finetune
    variant needs them; a local weights file must match its model."""
    entries = model_entries(models)
    finetunes = made_by(variants, "finetune")
    for name, entry in entries.items():
        if finetunes and "weights" not in entry:
            raise ConfigError(
                f"models: {name} has no weights, but variant {finetunes[0]} fine-tunes pretrained "
                f"weights of every model; list it as {{name: {name}, weights: DEFAULT or a file}}"
            )
    if all(name == "small_cnn" and "weights" not in e for name, e in entries.items()):
        return  # torch takes seconds to import: only when there is something to check
    from joulebench.models import ModelError

    for name, entry in entries.items():
        try:
            check_model(name, entry, shape)
        except ModelError as error:
            raise ConfigError(f"models: {error}") from None


def check_model(name: str, entry: dict, shape: tuple[int, int, int] | None) -> None:
    from joulebench.models import (
        build_model,
        check_input,
        check_model_name,
        load_matching,
        source_architecture,
    )
    from joulebench.train.pretrained import locate_weights, read_state_dict

    check_model_name(name)
    # The number of classes is only known after the data stage; any count tests the input size.
    recipe = {"arch": name, "in_channels": shape[0] if shape else 3, "num_classes": 10}
    if shape:
        recipe["image_size"] = list(shape[1:])
        check_input(build_model(recipe), name, shape, recipe["num_classes"])
    if "weights" in entry:
        kind, found = locate_weights(name, entry["weights"], entry["download"])
        # small_cnn's first layer takes the dataset's channels: unknown before an imagefolder is read.
        if kind == "file" and (shape or name != "small_cnn"):
            load_matching(source_architecture(recipe), read_state_dict(found), name, str(found))


def check_augmentation(augmentation: dict, source: str) -> None:
    """Build the albumentations pipeline now, so a wrong transform name or parameter fails first."""
    transforms = augmentation["transforms"]
    if not transforms:
        return  # albumentations takes seconds to import: only when it is used
    from joulebench.data.augment import AugmentationError, check_transforms

    # The digits are 8x8 grey; other sources are tried on a 32x32 colour image.
    shape = (1, 8, 8) if source == "sklearn-digits" else (3, 32, 32)
    try:
        check_transforms(transforms, shape)
    except AugmentationError as error:
        raise ConfigError(str(error)) from None


# Idle baseline length where energy.idle_baseline_seconds is `auto` and a counter exists.
AUTO_IDLE_SECONDS = 10.0


def has_energy_counter() -> bool:
    """Whether Zeus can read NVML or RAPL on this host (an idle baseline then means something).
    Zeus's device layer is imported here only: it needs no torch, so parsing the DAG stays light."""
    from zeus.device.cpu.rapl import rapl_is_available
    from zeus.device.gpu import nvml_is_available

    return nvml_is_available() or rapl_is_available()


def idle_baseline_seconds(configured) -> float:
    """energy.idle_baseline_seconds resolved: `auto` is AUTO_IDLE_SECONDS where a counter exists."""
    if configured != "auto":
        return float(configured)
    return AUTO_IDLE_SECONDS if has_energy_counter() else 0.0
