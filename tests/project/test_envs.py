"""The conda envs (`--sdm conda`) install the same stack as requirements.txt."""

import re

import yaml

from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(==|>=)\s*(\S+)$")


def pins(lines) -> dict[str, str]:
    """package (lower case) -> 'op version' for every pinned requirement line."""
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            found[match[1].lower()] = f"{match[2]}{match[3]}"
    return found


def test_every_conda_env_pins_what_requirements_pin():
    required = pins((ROOT / "requirements.txt").read_text().splitlines())
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(item["pip"] for item in spec["dependencies"] if isinstance(item, dict))
        env_pins = pins(pip)
        assert env_pins, env.name
        for package, pin in env_pins.items():
            assert required.get(package) == pin, f"{env.name}: {package}{pin} vs requirements.txt"
        if env.name != "report.yaml":  # the report measures nothing (and imports neither)
            assert "zeus" in env_pins and "psutil" in env_pins, f"{env.name}: every measuring rule family"


def test_every_rule_names_an_existing_conda_env():
    named = 0
    for rules in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        # Every rule that runs a script runs it in one of the envs.
        assert len(envs) == text.count("script:"), rules.name
        for env in envs:
            assert (rules.parent / env).resolve().is_file(), f"{rules.name}: {env}"
        named += len(envs)
    assert named >= 10
