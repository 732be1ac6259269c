"""config/README.md's key tables, made from the config schema (workflow/schemas/config.schema.yaml),
which owns every key's meaning, default and allowed values.

    .venv/bin/python -m joulebench.config_docs          # rewrite config/README.md
    .venv/bin/python -m joulebench.config_docs --check  # exit 1 if it is stale

The README's text above the generated part (MARKER) is written by hand and kept; everything from
the marker on is the schema's. A key with more to say than a table row holds has a section of its
own in docs/configuration.md, headed by the key in backticks; its row links there.
"""

import argparse
import re
import sys
from pathlib import Path

import yaml

from joulebench.config import ROOT, SCHEMA

README = ROOT / "config" / "README.md"
DETAILS = ROOT / "docs" / "configuration.md"
MARKER = "<!-- Generated from workflow/schemas/config.schema.yaml by `python -m joulebench.config_docs`: edit the schema, not this part. -->"  # noqa: E501
# A table row's description at most this long; more belongs in docs/configuration.md.
DESCRIPTION_CHARS = 240


def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def code(value) -> str:
    """A value as the config file spells it, in backticks."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, int | float):
        return f"`{number(value)}`"
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip()}`"


def number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds(prop: dict) -> list[str]:
    """A number's range, as comparisons."""
    parts = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in prop:
            parts.append(f"{sign} {number(prop[key])}")
    return parts


def allowed(prop: dict) -> str:
    """What a key accepts, where the schema narrows it: its choices, its range, `auto`."""
    if "enum" in prop:
        return "one of " + ", ".join(code(value) for value in prop["enum"])
    if "const" in prop:
        return code(prop["const"])
    choices = []
    for option in prop.get("oneOf", []):
        if "const" in option:
            choices.append(code(option["const"]))
        elif bounds(option):
            choices.append(f"{option.get('type', 'a number')} {' and '.join(bounds(option))}")
    if choices:
        return " or ".join(choices)
    return " and ".join(bounds(prop))


def default_cell(prop: dict, requirement: str | None) -> str:
    if requirement:
        return requirement
    if "properties" in prop:  # a section: its keys have the defaults
        return ""
    if "default" in prop and prop["default"] != {}:
        return code(prop["default"]) + (f" with `{prop['with']}`" if "with" in prop else "")
    return "unset"


def requirement_of(schema: dict, name: str) -> str | None:
    """How `schema` (an object) requires property `name`: always, in one branch of an if/then/else
    on another key, as one of several alternatives, or together with another key; None if not."""
    if name in schema.get("required", []):
        return "required"
    condition = schema.get("if", {})
    tested = [(key, sub["const"]) for key, sub in condition.get("properties", {}).items() if "const" in sub]
    if tested:
        key, value = tested[0]
        if name in schema.get("then", {}).get("required", []):
            return f"required where `{key}` is {code(value)}"
        if name in schema.get("else", {}).get("required", []):
            return f"required unless `{key}` is {code(value)}"
    alternatives = [option.get("required", []) for option in schema.get("oneOf", [])]
    if any(name in names for names in alternatives):
        return "required: one of " + ", ".join(f"`{names[0]}`" for names in alternatives if names)
    for key, names in schema.get("dependentRequired", {}).items():
        if name in names:
            return f"required with `{key}`"
    return None


def conditional_properties(schema: dict) -> dict:
    """Defaults an if/then of `schema` gives keys that exist only with another key, by name:
    {"default": value, "with": that key}."""
    condition = schema.get("if", {})
    if not condition.get("required") or condition.get("properties"):
        return {}
    key = condition["required"][0]
    return {
        name: {"default": prop["default"], "with": key}
        for name, prop in schema.get("then", {}).get("properties", {}).items()
        if "default" in prop
    }


def details_anchors(path: Path = DETAILS) -> dict[str, str]:
    """docs/configuration.md's sections by the key in their heading: key -> anchor."""
    if not path.exists():
        return {}
    anchors = {}
    for heading in re.findall(r"^#+ `([^`]+)`\s*$", path.read_text(encoding="utf-8"), re.M):
        anchors[heading] = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
    return anchors


def row(key: str, prop: dict, requirement: str | None, anchors: dict) -> str:
    meaning = prop.get("description", "")
    limits = allowed(prop)
    if limits:
        meaning += f" ({limits})" if meaning else limits
    if key in anchors:
        meaning += f" [More](../docs/configuration.md#{anchors[key]})."
    return f"| `{key}` | {meaning} | {default_cell(prop, requirement)} |"


def object_rows(schema: dict, prefix: str, anchors: dict) -> list[str]:
    """Rows of an object's keys, in schema order; an object key's own keys follow it."""
    rows = []
    properties = {**schema.get("properties", {})}
    for name, prop in conditional_properties(schema).items():
        properties[name] = {**properties.get(name, {}), **prop}
    for name, prop in properties.items():
        if prop == {}:  # a key declared in a shared part of the schema, allowed here
            continue
        key = f"{prefix}{name}"
        if name == "variants":  # a section of its own (variant_sections)
            continue
        rows.append(row(key, prop, requirement_of(schema, name), anchors))
        if "properties" in prop:
            rows += object_rows(prop, f"{key}.", anchors)
        items = prop.get("items", {})
        for option in [items, *items.get("oneOf", [])]:
            if "properties" in option:
                rows += object_rows(option, f"{key}[].", anchors)
    return rows


HEADER = ["| key | meaning | default |", "| --- | --- | --- |"]


def variant_sections(schema: dict, anchors: dict) -> list[str]:
    """The keys of a variant: those every technique shares, then a table per technique."""
    variant = schema["properties"]["variants"]["additionalProperties"]
    lines = [
        "## Variants",
        "",
        schema["properties"]["variants"]["description"],
        "",
        *HEADER,
        *object_rows(variant, "variants.<name>.", anchors),
    ]
    for branch in variant["allOf"]:
        technique = branch["if"]["properties"]["technique"]["const"]
        then = branch["then"]
        shared = [name for name, prop in then["properties"].items() if prop == {} and name != "technique"]
        required = [f"`{name}`" for name in shared if name in then.get("required", [])]
        optional = [f"`{name}`" for name in shared if name not in then.get("required", [])]
        lines += ["", f"### `technique: {technique}`", ""]
        text = then.get("description", "")
        if f"technique: {technique}" in anchors:
            text += f" [More](../docs/configuration.md#{anchors[f'technique: {technique}']})."
        if required:
            text += f" Requires {', '.join(required)} (above)."
        if optional:
            text += f" Also takes {', '.join(optional)} (above)."
        lines += [text.strip(), ""]
        rows = object_rows(then, "", anchors)
        lines += [*HEADER, *rows] if rows else []
    return lines


def generated_text(schema: dict | None = None, anchors: dict | None = None) -> str:
    """config/README.md's generated part, from MARKER to the end."""
    schema = schema if schema is not None else load_schema()
    anchors = anchors if anchors is not None else details_anchors()
    lines = [MARKER, "", "## Keys", "", *HEADER, *object_rows(schema, "", anchors), ""]
    lines += [*variant_sections(schema, anchors), ""]
    return "\n".join(lines)


def readme_text(current: str, schema: dict | None = None) -> str:
    """`current` README text with its generated part made anew from the schema."""
    head = current.split(MARKER, 1)[0] if MARKER in current else current.rstrip("\n") + "\n\n"
    return head + generated_text(schema)


def long_descriptions(schema: dict, path: str = "") -> list[tuple[str, int]]:
    """Every description in `schema` longer than DESCRIPTION_CHARS, with where it is."""
    found = []
    if isinstance(schema, dict):
        text = schema.get("description")
        if isinstance(text, str) and len(text) > DESCRIPTION_CHARS:
            found.append((path or "(root)", len(text)))
        for key, value in schema.items():
            found += long_descriptions(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found += long_descriptions(value, f"{path}/{index}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make config/README.md's key tables from the schema.")
    parser.add_argument("--check", action="store_true", help="exit 1 if config/README.md is stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = readme_text(current)
    if args.check:
        if current != wanted:
            print(f"{README} is stale: run python -m joulebench.config_docs", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
