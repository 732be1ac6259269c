"""The warm worker (joulebench.warm): a rule script forked from it behaves as if run on its own."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from joulebench import warm

SCRIPTS = ROOT / "workflow" / "scripts"
# Each test starts real interpreters and a worker that imports torch and the stages (about 25 s in
# all): outside the fast suite.
pytestmark = pytest.mark.slow

# A rule script's shape: ask the worker first; what follows runs in the forked child (or here).
JOB = textwrap.dedent(
    """
    import json, os, sys, time
    if __name__ == "__main__":
        from joulebench.warm import run_in_worker

        run_in_worker()
        action = sys.argv[1]
        if action == "report":
            import torch
            facts = {
                "pid": os.getpid(),
                "cwd": os.getcwd(),
                "marker": os.environ.get("JOB_MARKER"),
                "child": os.environ.get("JOULEBENCH_WARM_CHILD"),
                "torch_threads": torch.get_num_threads(),
                "umask": os.umask(0o022),
                "frozen": __import__("gc").get_freeze_count(),
            }
            print(json.dumps(facts))
            print("to stderr", file=sys.stderr)
        elif action == "who":
            print(json.dumps({"pid": os.getpid(), "child": os.environ.get("JOULEBENCH_WARM_CHILD")}))
        elif action == "exit":
            sys.exit(int(sys.argv[2]))
        elif action == "raise":
            raise RuntimeError("a failing rule")
        elif action == "sleep":
            import signal
            signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[2], "w").write("SIGTERM"), sys.exit(9)))
            open(sys.argv[3], "w").write(str(os.getpid()))
            time.sleep(60)
    """
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A warm worker started as the Snakefile's onstart starts it (this process is its parent)."""
    directory = tmp_path_factory.mktemp("warm")
    process = warm.start(str(SCRIPTS), str(directory / "worker.log"))
    assert process is not None, (directory / "worker.log").read_text()
    socket_path = os.environ[warm.SOCKET_VARIABLE]
    yield socket_path, process
    warm.stop(process)
    assert process.poll() is not None
    assert not Path(socket_path).exists()


def run_job(tmp_path, socket_path, *args, env=None, python=sys.executable):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    environment = {
        **os.environ,
        "PYTHONPATH": str(SCRIPTS),
        warm.SOCKET_VARIABLE: socket_path,
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.Popen(
        [python, str(script), *args],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_forked_job_gets_the_jobs_streams_directory_environment_and_threads(tmp_path, worker):
    socket_path, process = worker
    job = run_job(tmp_path, socket_path, "report", env={"JOB_MARKER": "seen", "OMP_NUM_THREADS": "2"})
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    facts = json.loads(out)
    assert facts["child"] == "1"  # it ran in the worker's child, not in the job's own interpreter
    assert facts["pid"] not in (job.pid, process.pid)
    assert facts["cwd"] == str(tmp_path)
    assert facts["marker"] == "seen"
    assert facts["torch_threads"] == 2  # OMP_NUM_THREADS of the job, though the worker loaded with 1
    # The worker's objects (torch, the stages) are out of the child's garbage collections.
    assert facts["frozen"] > 100_000
    assert "to stderr" in err


def test_exit_status_and_uncaught_errors_are_the_scripts(tmp_path, worker):
    socket_path, _ = worker
    job = run_job(tmp_path, socket_path, "exit", "3")
    job.communicate(timeout=60)
    assert job.returncode == 3
    job = run_job(tmp_path, socket_path, "raise")
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1
    assert "RuntimeError: a failing rule" in err


def _child_pid(path: Path) -> int:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int, timeout=10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_to_the_jobs_process_reaches_the_child(tmp_path, worker):
    socket_path, _ = worker
    marker, pid_file = tmp_path / "sigterm", tmp_path / "pid"
    job = run_job(tmp_path, socket_path, "sleep", str(marker), str(pid_file))
    child = _child_pid(pid_file)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert marker.read_text() == "SIGTERM"  # the script's own handler ran, in the child
    assert job.returncode == 9
    assert _gone(child)


def test_a_killed_jobs_child_dies_with_it(tmp_path, worker):
    """Snakemake kills a job's process (SIGKILL), not its child: the child must not train on."""
    socket_path, _ = worker
    pid_file = tmp_path / "pid"
    job = run_job(tmp_path, socket_path, "sleep", str(tmp_path / "unused"), str(pid_file))
    child = _child_pid(pid_file)
    job.kill()
    job.communicate(timeout=60)
    assert _gone(child)


def test_a_job_in_another_interpreter_or_without_a_worker_runs_on_its_own(tmp_path, worker):
    socket_path, _ = worker
    for env in ({warm.SOCKET_VARIABLE: str(tmp_path / "no-such.sock")}, {warm.SWITCH_VARIABLE: "0"}):
        job = run_job(tmp_path, socket_path, "report", env=env)
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        facts = json.loads(out)
        assert facts["child"] is None and facts["pid"] == job.pid
    # Another interpreter (a conda env of --use-conda): the worker refuses, the job runs itself.
    other = str(Path(sys.executable).resolve())  # the venv's base interpreter
    assert other != sys.executable
    job = run_job(tmp_path, socket_path, "who", python=other)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert json.loads(out) == {"pid": job.pid, "child": None}


def test_the_worker_stops_when_the_process_that_started_it_is_gone(tmp_path):
    starter = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(SCRIPTS)!r})
        from joulebench import warm
        process = warm.start({str(SCRIPTS)!r}, {str(tmp_path / "worker.log")!r})
        print(process.pid, os.environ[warm.SOCKET_VARIABLE], flush=True)
        os._exit(0)  # no warm.stop: a Snakemake killed with SIGKILL
        """
    )
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=240).stdout
    pid, socket_path = out.split()
    assert _gone(int(pid), timeout=15)
    assert not Path(socket_path).exists()


# It reads the shared tiny run.
def test_a_local_run_starts_its_jobs_from_the_warm_worker_and_stops_it(tiny_run):
    workdir, _, _ = tiny_run
    warm_logs = {path for path in (workdir / "logs").rglob("*.log") if "warm worker" in path.read_text()}
    for rule in ("prepare_dataset", "clean_dataset", "train_model", "evaluate_model", "compare_inference"):
        assert any(rule in str(path) for path in warm_logs), rule
    # aggregate_report imports no torch: it starts in its own interpreter.
    assert not any("aggregate_report" in str(path) for path in warm_logs)
    # The worker said where it accepted jobs; after the run that socket is gone, and so is it.
    # The log's first part: later tests rerun Snakemake here, and each run's worker appends its own.
    runs = (workdir / "logs" / "warm_worker.log").read_text().split(warm.RUN_HEADER)
    worker_log = runs[1]
    socket_path = worker_log.split("accepting jobs on ")[1].split()[0]
    assert not Path(socket_path).exists()
    # The QAT job named its method: the worker traced torchao's patterns once, before forking it,
    # and the job itself (its log) traced none.
    assert worker_log.count("prepared joulebench.quantize int8_qat") == 1
    assert "traced" in worker_log.split("prepared joulebench.quantize int8_qat")[0]
    (qat_log,) = (workdir / "logs" / "quantize_model").rglob("channels50_qat/seed0.log")
    assert "started from the run's warm worker" in qat_log.read_text()
    assert "PT2E patterns" not in qat_log.read_text()


# About 30 s: ten job start-ups and the worker's own.
def test_warm_start_benchmark_runs_as_printed():
    from test_readme import readme_commands

    (command,) = [c for c in readme_commands("Tests") if "bench_warm_start" in c]
    argv = shlex.split(command)
    assert argv[0] == "python"
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ratio = float(result.stdout.split("warm worker: ")[-1])
    assert ratio > 1, result.stdout  # a forked job starts faster than one importing torch itself
