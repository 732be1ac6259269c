"""config/README.md's key tables are the schema's (joulebench.config_docs): committed as generated,
short, with every key described once and every longer text on docs/configuration.md."""

import copy
import re

import pytest

from conftest import ROOT
from joulebench import config_docs


@pytest.fixture(scope="module")
def schema():
    return config_docs.load_schema()


def test_the_committed_readme_is_the_generated_one():
    current = config_docs.README.read_text(encoding="utf-8")
    assert config_docs.MARKER in current
    assert current == config_docs.readme_text(current), "run: python -m joulebench.config_docs"
    assert config_docs.main(["--check"]) == 0


def test_the_check_fails_on_a_stale_readme(tmp_path, monkeypatch):
    stale = tmp_path / "README.md"
    stale.write_text(config_docs.README.read_text(encoding="utf-8").replace("`0.15`", "`0.25`"))
    monkeypatch.setattr(config_docs, "README", stale)
    assert config_docs.main(["--check"]) == 1
    assert config_docs.main([]) == 0 and config_docs.main(["--check"]) == 0
    assert "| `dataset.val_fraction` |" in stale.read_text() and "`0.15`" in stale.read_text()


def properties(schema, path=""):
    """Every property schema that declares a key, with its path (not those of a condition)."""
    if isinstance(schema, dict):
        for name, prop in schema.get("properties", {}).items():
            yield f"{path}/{name}", prop
        for key, value in schema.items():
            if key not in ("if", "not"):
                yield from properties(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from properties(value, f"{path}/{index}")


def test_every_key_is_described_briefly(schema):
    for path, prop in properties(schema):
        # A key re-declared in a branch ({}) or given a default by an if/then has its text elsewhere.
        if prop == {} or set(prop) == {"default"}:
            continue
        assert isinstance(prop.get("description"), str), path
        # A YAML flow mapping cut at a comma leaves a key with no value: a text in two pieces.
        assert None not in prop.values(), path
    assert config_docs.long_descriptions(schema) == []


def test_rows_are_short_and_name_every_key_once():
    text = config_docs.README.read_text(encoding="utf-8").split(config_docs.MARKER, 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert max(len(row) for row in rows) < 400
    keys = [row.split("`")[1] for row in rows]
    top = [key for key in keys if "." in key or key in ("seeds", "models", "dataset")]
    assert len(top) == len(set(top))
    for key in ("dataset.name", "models[].weights", "energy.carbon.pue", "report.constraints.size_bytes"):
        assert key in keys, key


def test_every_link_to_the_details_page_has_its_section_and_every_section_a_link():
    text = config_docs.README.read_text(encoding="utf-8")
    links = set(re.findall(r"\(\.\./docs/configuration\.md#([\w-]+)\)", text))
    anchors = config_docs.details_anchors()
    assert links == set(anchors.values()) and len(links) > 5
    assert all((ROOT / path).exists() for path in ("docs/configuration.md", "config/README.md"))


def test_the_tables_follow_the_schema(schema):
    changed = copy.deepcopy(schema)
    dataset = changed["properties"]["dataset"]["properties"]
    dataset["split_seed"]["default"] = 7
    dataset["colour"] = {"enum": ["grey", "rgb"], "default": "rgb", "description": "Colour mode."}
    prune = changed["properties"]["variants"]["additionalProperties"]["allOf"][1]["then"]
    prune["required"].append("steps")
    text = config_docs.generated_text(changed, anchors={})
    assert "| `dataset.split_seed` | Seed of the train/val/test split" in text
    assert text.split("| `dataset.split_seed` |")[1].split("\n")[0].endswith("| `7` |")
    assert "| `dataset.colour` | Colour mode. (one of `grey`, `rgb`) | `rgb` |" in text
    steps = text.split("### `technique: prune`")[1].split("| `steps` |")[1].split("\n")[0]
    assert steps.endswith("| required |")
    assert "[More]" not in text
