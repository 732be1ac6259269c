"""joulebench's version, written once: in pyproject.toml.

The package runs from the checkout (workflow/scripts/ on the path), where pyproject.toml sits at
the root; an installed copy reads its distribution's metadata instead.
"""

import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def version(pyproject: Path = PYPROJECT) -> str:
    """The version in `pyproject` where it is joulebench's, else the installed distribution's,
    else "unknown" (never an error: a report without a version still reports)."""
    try:
        with pyproject.open("rb") as handle:
            project = tomllib.load(handle)["project"]
        if project["name"] == "joulebench":
            return project["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version("joulebench")
    except metadata.PackageNotFoundError:
        return "unknown"
