"""A rule job's logging: stderr and `logging` into the rule's log file, at the job's threads."""

import logging
import os
import sys

from joulebench.run.environment import CHILD_VARIABLE


def start_rule_logging(log_path, threads: int) -> None:
    """Send stderr and `logging` to the rule's log file; compute in the threads Snakemake gave the
    job (torch's, where the job's stage imported torch: the report's environment has none)."""
    stream = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("zeus").setLevel(logging.WARNING)
    if os.environ.get(CHILD_VARIABLE):
        logging.getLogger(__name__).info("started from the run's warm worker (joulebench.run.warm_worker)")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
