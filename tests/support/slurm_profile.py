"""The shipped SLURM profile with the test cluster's keys laid over it."""

from pathlib import Path

import yaml

from conftest import ROOT

SLURM_SCRIPTS = ROOT / "tests" / "slurm"


def profile_for_tests(directory: Path) -> Path:
    """profiles/slurm with only the test cluster's keys (tests/slurm/profile) laid over it."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    overrides = yaml.safe_load((SLURM_SCRIPTS / "profile" / "config.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict):
            profile[key] = {**profile.get(key, {}), **value}
        else:
            profile[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory
