"""The one way a rule script runs its stage: warm start, the rule's log, then the stage's call.

Every script in this folder is a few lines that name its stage and the wildcards it takes; the
package (joulebench) never sees Snakemake's object. A change to how jobs start is an edit here.
"""

import importlib


def run_stage(snakemake, stage: str, warm: bool = True, work: tuple[str, str] | None = None, **wildcards):
    """Run `stage` ("module:function") with the rule's declared inputs, outputs and params.

    `warm`: first hand the job to the run's warm worker, where there is one (joulebench.run.warm_worker),
    which returns only where none answers; `work`, a (module, method) pair whose set-up the worker
    runs once before forking the job. `wildcards`: the stage's arguments taken from the job's
    wildcards, already converted.
    """
    if warm:
        from joulebench.run.warm_worker import run_in_worker

        run_in_worker(work)
    from joulebench.run.logs import start_rule_logging

    start_rule_logging(snakemake.log[0], snakemake.threads)
    module, function = stage.split(":")
    run = getattr(importlib.import_module(module), function)
    run(
        dict(snakemake.input.items()),
        dict(snakemake.output.items()),
        **dict(snakemake.params.items()),
        **wildcards,
    )
