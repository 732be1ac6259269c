"""Checks a JSON schema cannot express; run right after schema validation, before any job."""

from joulebench.carbon import CarbonSettingsError, carbon_model

BASELINE = "baseline"


class ConfigError(ValueError):
    """A config problem, named by its key, with what to do about it."""


def check_config(config: dict) -> None:
    variants = config["variants"]
    for name, variant in variants.items():
        parent = variant.get("from", BASELINE)
        if parent != BASELINE and parent not in variants:
            raise ConfigError(
                f"variants.{name}.from: unknown variant {parent!r}; use baseline or one of {sorted(variants)}"
            )
        if parent != BASELINE and variants[parent]["technique"] == "power_limit":
            raise ConfigError(
                f"variants.{name}.from: {parent} is a power_limit variant, which is skipped on hosts "
                "without a GPU, so nothing can start from it; start from baseline"
            )
        seen = [name]
        while parent != BASELINE:
            if parent in seen:
                raise ConfigError(
                    f"variants.{name}.from: the chain {' -> '.join([*seen, parent])} is a cycle"
                )
            seen.append(parent)
            parent = variants[parent].get("from", BASELINE)
    try:
        carbon_model(config["energy"].get("carbon", {}))
    except CarbonSettingsError as error:
        raise ConfigError(str(error)) from None
    dataset = config["dataset"]
    if dataset["source"] != "sklearn-digits" and "root" not in dataset:
        raise ConfigError(f"dataset.root: required for source {dataset['source']!r}; set the local directory")
    if dataset["val_fraction"] + dataset["test_fraction"] >= 0.9:
        raise ConfigError("dataset.val_fraction + dataset.test_fraction must leave at least 10% for training")
    check_augmentation(config.get("augmentation", {}), dataset["source"])


def check_augmentation(augmentation: dict, source: str) -> None:
    """Build the albumentations pipeline now, so a wrong transform name or parameter fails first."""
    transforms = augmentation.get("transforms", [])
    if not transforms:
        return  # albumentations takes seconds to import: only when it is used
    from joulebench.augment import AugmentationError, check_transforms

    # The digits are 8x8 grey; other sources are tried on a 32x32 colour image.
    shape = (1, 8, 8) if source == "sklearn-digits" else (3, 32, 32)
    try:
        check_transforms(transforms, shape)
    except AugmentationError as error:
        raise ConfigError(str(error)) from None
