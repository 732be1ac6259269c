"""joulebench: what Green-AI techniques buy, in accuracy and joules.

One subpackage per stage of the workflow, mirroring workflow/rules/: data, train, compress,
evaluate, energy (the meter and what it reads) and report; run holds the job start-up machinery.
Each stage subpackage has a `stages` module with one function per rule, named after it. A stage
takes `inputs` and `outputs`, the rule's declared files by name (Snakemake's `input` and
`output`), so a file's path is spelled once, in its rule; the rest are the config values the rule
passes as params. The rule scripts in workflow/scripts/ call them through one adapter
(stage_adapter.run_stage) and the package never sees Snakemake.
"""

from joulebench.version import version as _version

__version__ = _version()
