"""Job start-up with and without the warm worker (joulebench.run.warm_worker), measured in one run.

Starts a warm worker as the Snakefile's onstart does, then runs a rule-shaped script (it asks the
worker first, then imports what evaluate_model's adapter imports and sets the job's threads) k
times each way, alternating: in its own interpreter (JOULEBENCH_WARM=0) and forked from the worker.
Prints the median wall seconds from start to exit of each way and their ratio (cold / warm), and
the worker's own start (paid once per run).

    python bench/bench_warm_start.py [--jobs 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from joulebench.run import warm_worker

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"

JOB = """
if __name__ == "__main__":
    from joulebench.run.warm_worker import run_in_worker

    run_in_worker()
    from joulebench.run.logs import start_rule_logging
    from joulebench.evaluate.stages import evaluate_model  # noqa: F401

    start_rule_logging("job.log", 1)
"""


def job_seconds(script: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs each way (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "job.py"
        script.write_text(JOB)
        started = time.perf_counter()
        worker, how_jobs_start = warm_worker.start(str(SCRIPTS), str(Path(folder) / "worker.log"))
        if worker is None:
            sys.exit(how_jobs_start)
        worker_s = time.perf_counter() - started
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS), "OMP_NUM_THREADS": "1"}
        cold, hot = [], []
        try:
            for _ in range(args.jobs):
                cold.append(job_seconds(script, {**env, warm_worker.SWITCH_VARIABLE: "0"}))
                hot.append(job_seconds(script, env))
        finally:
            warm_worker.stop(worker)
    cold_s, warm_s = statistics.median(cold), statistics.median(hot)
    print(f"worker start (once per run): {worker_s:.2f} s")
    print(f"job start-up, own interpreter: median {cold_s:.2f} s over {args.jobs} jobs")
    print(f"job start-up, forked from the warm worker: median {warm_s:.2f} s over {args.jobs} jobs")
    print(f"ratio own interpreter / warm worker: {cold_s / warm_s:.1f}")


if __name__ == "__main__":
    main()
