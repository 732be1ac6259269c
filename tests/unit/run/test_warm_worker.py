"""The warm worker (joulebench.run.warm_worker): a rule script forked from it behaves as if run on its own."""

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from joulebench.run import warm_worker

SCRIPTS = ROOT / "workflow" / "scripts"

# A rule script's shape: ask the worker first; what follows runs in the forked child (or here).
JOB = textwrap.dedent(
    """
    import json, os, sys, time
    if __name__ == "__main__":
        from joulebench.run.warm_worker import run_in_worker

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


# The tests that start real interpreters and a worker that imports torch and the stages (about 25 s
# in all) are outside the fast suite.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A warm worker started as the Snakefile's onstart starts it (this process is its parent)."""
    directory = tmp_path_factory.mktemp("warm")
    process, started = warm_worker.start(str(SCRIPTS), str(directory / "worker.log"))
    assert process is not None, (directory / "worker.log").read_text()
    assert (
        started
        == f"joulebench: jobs start from the warm worker (pid {process.pid}, log {directory}/worker.log)"
    )
    socket_path = os.environ[warm_worker.SOCKET_VARIABLE]
    yield socket_path, process
    warm_worker.stop(process)
    assert process.poll() is not None
    assert not Path(socket_path).exists()


# A job that names its set-up, as the QAT job does (torchao's PT2E patterns, traced in the worker),
# and reports the CUDA state it started with.
CUDA_JOB = textwrap.dedent(
    """
    import json, os, sys
    if __name__ == "__main__":
        from joulebench.run.warm_worker import run_in_worker

        run_in_worker(work=tuple(sys.argv[1:3]) if len(sys.argv) > 2 else None)
        import torch

        facts = {
            "child": os.environ.get("JOULEBENCH_WARM_CHILD"),
            "bad_fork": torch.cuda._is_in_bad_fork(),
            "initialized": torch.cuda.is_initialized(),
            "device_query": type(torch._C._cuda_getDeviceCount).__name__,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        print(json.dumps(facts))
    """
)


def run_job(tmp_path, socket_path, *args, env=None, python=sys.executable, script_text=JOB):
    script = tmp_path / "job.py"
    script.write_text(script_text)
    environment = {
        **os.environ,
        "PYTHONPATH": str(SCRIPTS),
        warm_worker.SOCKET_VARIABLE: socket_path,
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


@slow
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


@slow
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


@slow
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


@slow
def test_a_killed_jobs_child_dies_with_it(tmp_path, worker):
    """Snakemake kills a job's process (SIGKILL), not its child: the child must not train on."""
    socket_path, _ = worker
    pid_file = tmp_path / "pid"
    job = run_job(tmp_path, socket_path, "sleep", str(tmp_path / "unused"), str(pid_file))
    child = _child_pid(pid_file)
    job.kill()
    job.communicate(timeout=60)
    assert _gone(child)


@slow
def test_a_job_in_another_interpreter_or_without_a_worker_runs_on_its_own(tmp_path, worker):
    socket_path, _ = worker
    for env in (
        {warm_worker.SOCKET_VARIABLE: str(tmp_path / "no-such.sock")},
        {warm_worker.SWITCH_VARIABLE: "0"},
    ):
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


@slow
def test_the_worker_stops_when_the_process_that_started_it_is_gone(tmp_path):
    starter = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(SCRIPTS)!r})
        from joulebench.run import warm_worker
        process, _ = warm_worker.start({str(SCRIPTS)!r}, {str(tmp_path / "worker.log")!r})
        print(process.pid, os.environ[warm_worker.SOCKET_VARIABLE], flush=True)
        os._exit(0)  # no warm_worker.stop: a Snakemake killed with SIGKILL
        """
    )
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=240).stdout
    pid, socket_path = out.split()
    assert _gone(int(pid), timeout=15)
    assert not Path(socket_path).exists()


# It reads the shared tiny run.
@slow
def test_a_local_run_starts_its_jobs_from_the_warm_worker_and_stops_it(tiny_run):
    workdir, _, result = tiny_run
    assert "joulebench: jobs start from the warm worker (pid " in result.stderr
    warm_logs = {path for path in (workdir / "logs").rglob("*.log") if "warm worker" in path.read_text()}
    for rule in ("prepare_dataset", "clean_dataset", "train_model", "evaluate_model", "compare_inference"):
        assert any(rule in str(path) for path in warm_logs), rule
    # aggregate_report imports no torch: it starts in its own interpreter.
    assert not any("aggregate_report" in str(path) for path in warm_logs)
    # The worker said where it accepted jobs; after the run that socket is gone, and so is it.
    # The log's first part: later tests rerun Snakemake here, and each run's worker appends its own.
    runs = (workdir / "logs" / "warm_worker.log").read_text().split(warm_worker.RUN_HEADER)
    worker_log = runs[1]
    socket_path = worker_log.split("accepting jobs on ")[1].split()[0]
    assert not Path(socket_path).exists()
    # The QAT job named its method: the worker traced torchao's patterns once, before forking it,
    # and the job itself (its log) traced none.
    assert worker_log.count("prepared joulebench.compress.quantize int8_qat") == 1
    assert "traced" in worker_log.split("prepared joulebench.compress.quantize int8_qat")[0]
    (qat_log,) = (workdir / "logs" / "quantize_model").rglob("channels50_qat/seed0.log")
    assert "started from the run's warm worker" in qat_log.read_text()
    assert "PT2E patterns" not in qat_log.read_text()


# About 30 s: ten job start-ups and the worker's own.
@slow
def test_warm_start_benchmark_runs_as_printed():
    from readme import readme_commands

    (command,) = [c for c in readme_commands("Tests") if "bench_warm_start" in c]
    argv = shlex.split(command)
    assert argv[0] == "python"
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ratio = float(result.stdout.split("warm worker: ")[-1])
    assert ratio > 1, result.stdout  # a forked job starts faster than one importing torch itself


@slow
def test_a_forked_job_starts_with_clean_cuda_state(tmp_path, worker):
    """The worker imported torchao (whose import queries CUDA) and, for the QAT job, traced the PT2E
    patterns (which query it again): neither may reach the CUDA driver, whose start arms torch's fork
    guard. A job forked afterwards must be able to start CUDA itself, with its own
    CUDA_VISIBLE_DEVICES, and must query the real device count."""
    socket_path, _ = worker
    for work in ((), ("joulebench.compress.quantize", "int8_qat")):
        env = {"CUDA_VISIBLE_DEVICES": "3"}
        job = run_job(tmp_path, socket_path, *work, env=env, script_text=CUDA_JOB)
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
        facts = json.loads(out)
        assert facts == {
            "child": "1",  # forked from the worker
            "bad_fork": False,  # the worker never started the CUDA driver
            "initialized": False,
            "device_query": "builtin_function_or_method",  # torch's own, not the worker's stand-in
            "visible": "3",
        }, work


def _python(code: str, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@slow
def test_the_fork_check_sees_a_started_cuda_driver_and_the_guard_keeps_torchao_from_it():
    # Without the guard, torchao's import alone arms torch's fork guard (it calls
    # torch.cuda.is_available()); with it, it does not. The check sees both, in a forked probe.
    worker = "from joulebench.run import warm_worker"
    check = f"{worker}; print(warm_worker._check_fork_is_clean())"
    assert _python(f"import torch, torchao; {check}").startswith("a process forked from the worker")
    assert _python(f"{worker}; warm_worker._cuda_answers_no_gpu(); import torchao; {check}") == "None"
    assert "NVML library is loaded" in _python(f"import torch, pynvml; pynvml.nvmlLib = object(); {check}")


@slow
def test_a_worker_that_would_hand_jobs_a_started_cuda_driver_refuses_and_the_console_says_so(
    tmp_path, monkeypatch
):
    # A library that reaches the driver past the guard, here at interpreter start-up (sitecustomize).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available()\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.delenv(warm_worker.SOCKET_VARIABLE, raising=False)
    process, started = warm_worker.start(str(SCRIPTS), str(tmp_path / "worker.log"))
    assert process is None and warm_worker.SOCKET_VARIABLE not in os.environ
    assert started.startswith(
        "joulebench: each job starts in its own interpreter: the warm worker did not start"
    )
    assert f"exited with status {warm_worker.REFUSED_STATUS}" in started
    assert "a process forked from the worker could not use CUDA" in started


def test_no_worker_on_a_host_with_a_gpu(monkeypatch):
    # Zeus's NVML check answers (an NVIDIA host): no worker starts, and the console says why.
    import zeus.device.gpu

    monkeypatch.delenv(warm_worker.SWITCH_VARIABLE, raising=False)
    assert warm_worker.gpu_on_host() is None  # this host has none
    monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: True)
    assert warm_worker.gpu_on_host() == "NVML answers on this host (an NVIDIA GPU)"
    process, started = warm_worker.start(str(SCRIPTS), "/nonexistent/worker.log")
    assert process is None
    assert started == (
        "joulebench: each job starts in its own interpreter, not from a warm worker: NVML answers on "
        "this host (an NVIDIA GPU), and CUDA cannot be used in a forked process"
    )
    monkeypatch.setattr(zeus.device.gpu, "nvml_is_available", lambda: False)
    monkeypatch.setattr(warm_worker, "GPU_DEVICE_NODES", (str(ROOT / "README.m[d]"),))  # a node that exists
    assert warm_worker.gpu_on_host() == f"this host has GPU device nodes ({ROOT / 'README.md'})"


def test_sockets_live_in_a_private_directory_and_a_killed_runs_are_swept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    directory = warm_worker.socket_directory()
    assert directory.parent == tmp_path and stat.S_IMODE(directory.stat().st_mode) == 0o700
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left_behind = directory / f"{dead.pid}-1.sock"  # its Snakemake process is gone
    ours = directory / f"{os.getpid()}-2.sock"
    for path in (left_behind, ours):
        path.touch()
    warm_worker.sweep_sockets(directory)
    assert not left_behind.exists() and ours.exists()
    directory.chmod(0o755)  # another user could connect: refused
    with pytest.raises(OSError, match="not a directory of this user's alone"):
        warm_worker.socket_directory()
