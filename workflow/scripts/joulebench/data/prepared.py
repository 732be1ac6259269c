"""The files a prepared dataset is made of, named once: the prepare_dataset rule declares them from
here, and benchmarks and tests that prepare a dataset outside Snakemake lay them out the same way.
Imports nothing heavy: the workflow reads it when it parses."""

from pathlib import Path

PREPARED_FILES = {
    "splits": "splits.npz",
    "facts": "dataset.json",
    "rejected": "rejected.csv",
    "energy": "energy.json",
}


def prepared_files(folder) -> dict[str, str]:
    """The prepared dataset's files in `folder`, by the names prepare_dataset takes them."""
    return {key: str(Path(folder) / name) for key, name in PREPARED_FILES.items()}
