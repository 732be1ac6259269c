"""Messages a user reads: schema errors in a few lines with the closest valid key, lineage
suggestions, weights names, counts of images, and the report's copy of the config."""

import numpy as np
import pytest
import yaml

from conftest import run_snakemake, tiny_config
from joulebench.config import ConfigError, check_config, resolved_config
from joulebench.data import loader, sources, splits
from joulebench.report import aggregate
from joulebench.train.pretrained import torchvision_weights
from joulebench.variants import lineage_error

# One screen: what a config error may take up, Snakemake's own lines included.
SCREEN_LINES = 15


def schema_message(change) -> str:
    config = tiny_config()
    change(config)
    with pytest.raises(ConfigError) as error:
        resolved_config(config)
    return str(error.value)


def rename(section: dict, old: str, new: str) -> None:
    section[new] = section.pop(old)


def test_a_misspelt_top_level_key_gets_the_closest_key_in_a_few_lines():
    message = schema_message(lambda c: rename(c, "training", "trainig"))
    assert message.splitlines()[:2] == [
        "config: Additional properties are not allowed ('trainig' was unexpected)",
        "  trainig: did you mean training?",
    ]
    assert "valid keys at the top level: dataset, models, seeds, training," in message
    assert len(message.splitlines()) <= SCREEN_LINES - 3
    assert "$schema" not in message and "On instance" not in message


def test_a_misspelt_nested_key_is_named_by_its_path():
    message = schema_message(lambda c: rename(c["training"], "batch_size", "bach_size"))
    assert "  training.bach_size: did you mean training.batch_size?" in message.splitlines()
    assert "valid keys of training: epochs, batch_size, lr," in message


def test_a_key_of_another_technique_lists_this_techniques_keys():
    message = schema_message(lambda c: c["variants"]["bf16"].update(**{"from": "prune80"}))
    assert message.splitlines() == [
        "variants.bf16: Additional properties are not allowed ('from' was unexpected)",
        "  variants.bf16.from: no valid key is close",
        "  valid keys of variants.bf16: technique, device, precision",
    ]


def test_a_misspelt_key_of_a_model_entry_is_found_inside_its_one_of():
    models = ["small_cnn", {"name": "resnet18", "weigths": "DEFAULT"}]
    message = schema_message(lambda c: c.update(models=models))
    assert "  models[1].weigths: did you mean models[1].weights?" in message.splitlines()


def test_a_wrong_value_names_its_key_and_the_closest_choice():
    message = schema_message(lambda c: c["variants"]["bf16"].update(technique="precison"))
    assert message.startswith("variants.bf16.technique: 'precison' is not one of ['precision', ")
    assert message.splitlines()[-1] == "  did you mean precision?"
    assert schema_message(lambda c: c["training"].update(epochs="five")) == (
        "training.epochs: 'five' is not of type 'integer'"
    )


def test_a_long_schema_message_is_cut():
    variant = {"technique": "power_limit", "power_limit_w": 200, "eta_knob": 0.3, "note": "x" * 500}
    message = schema_message(lambda c: c["variants"].update(pl=variant))
    assert message.startswith("variants.pl: ") and len(message) < 600


@pytest.mark.slow
def test_snakemake_shows_only_the_short_message_before_any_job(tmp_path):
    config = tiny_config()
    rename(config, "training", "trainig")
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "trainig: did you mean training?" in result.stdout
    assert len((result.stdout + result.stderr).splitlines()) <= SCREEN_LINES
    assert not (tmp_path / "results").exists()


def test_an_unknown_parent_is_not_offered_the_variant_itself_or_its_descendants():
    variants = {
        "q": {"technique": "quantize", "from": "gone"},
        "q_pruned": {"technique": "prune", "from": "q"},  # starting q from it would be a cycle
        "capped": {"technique": "power_limit", "power_limit_w": 200},  # skipped without a GPU
        "bf16": {"technique": "precision", "precision": "bf16"},
    }
    assert (
        lineage_error(variants, "q")
        == "variants.q.from: unknown variant 'gone'; use baseline or one of ['bf16']"
    )
    assert lineage_error({"q": {"technique": "quantize", "from": "q2"}}, "q") == (
        "variants.q.from: unknown variant 'q2'; use baseline"
    )


def test_an_unknown_parent_gets_the_closest_name():
    variants = {"q": {"technique": "quantize", "from": "prune8"}, "prune80": {"technique": "prune"}}
    assert lineage_error(variants, "q") == (
        "variants.q.from: unknown variant 'prune8'; did you mean prune80? use baseline or one of ['prune80']"
    )


def test_weights_choices_name_each_weights_once():
    with pytest.raises(Exception, match="not weights of model resnet18") as error:
        torchvision_weights("resnet18", "ResNet50_Weights.DEFAULT")
    assert str(error.value).endswith("ResNet18_Weights has DEFAULT, IMAGENET1K_V1")


def test_counts_of_images_are_pluralised():
    assert [sources.image_count(n) for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert sources.image_count(1, "training") == "1 training image"
    with pytest.raises(sources.DatasetError, match=r"larger than the training split \(1 image after"):
        loader.check_batch_size(1, 64)
    labels = np.array([0] * 11 + [1])
    with pytest.raises(sources.DatasetError, match=r"\(smallest: '1', 1 image\)$"):
        splits.split_arrays(np.zeros((12, 1, 4, 4), dtype=np.uint8), labels, 0.15, 0.2, seed=0)


def test_the_reports_config_keeps_unicode_paths_readable(tmp_path):
    config = {"dataset": {"name": "pets", "source": "imagefolder", "root": "/data/Bilder/Kätzchen"}}
    text = aggregate.config_text(config)
    assert "/data/Bilder/Kätzchen" in text and "\\x" not in text
    assert yaml.safe_load(text) == config


# --- The config check the workflow runs before any job (common.smk), without Snakemake ----------


def checked(change) -> None:
    """Validate and check `change`d tiny config the way common.smk does before any job."""
    config = tiny_config(augmentation={"transforms": []})
    change(config)
    check_config(resolved_config(config))


def test_an_unknown_top_level_key_is_refused():
    with pytest.raises(ConfigError, match=r"'colour' was unexpected"):
        checked(lambda c: c.update(colour="blue"))


def test_validation_and_test_splits_must_leave_a_tenth_for_training():
    # Each fraction is within the schema's bounds (under 0.5); their sum is checked apart.
    for val, test in ((0.45, 0.45), (0.49, 0.49)):
        with pytest.raises(
            ConfigError, match=r"val_fraction \+ dataset.test_fraction must leave at least 10%"
        ):
            checked(lambda c, val=val, test=test: c["dataset"].update(val_fraction=val, test_fraction=test))
    checked(lambda c: c["dataset"].update(val_fraction=0.4, test_fraction=0.45))
