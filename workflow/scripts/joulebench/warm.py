"""Warm start: each rule job forked from a worker that has already imported torch and the stages.

A rule job is a fresh Python process that imports torch, Zeus, torchao, Torch-Pruning and Dynamo
before its work starts: 2-5 s a job on a 2-core machine, over 60 jobs in the default run. Under the
local executor, the Snakefile's `onstart` starts one warm worker for the run (`start`). The worker
imports those libraries once, then forks a child for each job that asks (`run_in_worker`, the first
call of every rule script). The job is still a process of its own: its own energy windows, CPU
seconds and peak memory, run in the job's directory, environment and standard streams, with the
script's exit status. The worker runs torch on one thread only (the set-ups below), so it keeps no
thread pool that a fork would break; it exits with the run (`stop`) or when the Snakemake process
that started it is gone.

A job may also name the work it is about to do (`run_in_worker(work=(stage, method))`): the worker
then runs that work's set-up before the window once (joulebench.stages.prepare_before_window, such
as tracing torchao's PT2E patterns), and the job and every job forked after it inherit the result.

Where no worker answers (SLURM jobs, scripts run outside Snakemake, JOULEBENCH_WARM=0, a worker
that failed to start), the job runs in its own interpreter, as it always did.

Why by hand: no library forks prepared interpreters for Snakemake jobs; multiprocessing's
forkserver preloads modules the same way but only for its own Process objects, not for a script
that Snakemake starts with its own standard streams, environment and exit status.
"""

import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_VARIABLE = "JOULEBENCH_WARM_SOCKET"
SWITCH_VARIABLE = "JOULEBENCH_WARM"
# Set in a forked job, so that its script runs the work instead of asking the worker again.
CHILD_VARIABLE = "JOULEBENCH_WARM_CHILD"
# What every job imports before its work (and each stage's WORK_MODULES): imported once, here.
PRELOAD = (
    "numpy",
    "threadpoolctl",
    "torch",
    "torch.utils.flop_counter",
    "torch.export",
    "joulebench.stages",
    "joulebench.energy",
    "joulebench.train",
    "joulebench.evaluate",
    "joulebench.compare",
    "joulebench.quantize",
    "joulebench.prune",
    "joulebench.clean",
    "joulebench.sample",
    "joulebench.augment",
    "joulebench.data",
)
# Signals a job's process receives on its own (a user's kill, a timeout); passed on to the child.
# SIGINT is not: Ctrl-C reaches the whole process group, the child included.
FORWARDED = (signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT_S = 180
# The line that opens each run's part of the worker's log.
RUN_HEADER = "== warm worker for the run started"


def preload() -> None:
    """Import PRELOAD and what each of its stages imports before its window (its WORK_MODULES, a
    tuple or a tuple per method), so a stage that gains such a list is preloaded with no edit here."""
    for name in PRELOAD:
        modules = getattr(importlib.import_module(name), "WORK_MODULES", ())
        for group in modules.values() if isinstance(modules, dict) else [modules]:
            for module in group:
                importlib.import_module(module)


# ---------------------------------------------------------------------------------------- worker


def serve(path: str, parent: int) -> None:
    """Accept jobs on the Unix socket `path` until SIGTERM or until process `parent` is gone."""
    preload()
    gc.collect()  # what the children inherit frozen (_start_job) is what is alive, not garbage
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    log.info(
        "warm worker %d: preloaded %d modules; accepting jobs on %s", os.getpid(), len(sys.modules), path
    )
    jobs = {}  # child pid -> the connection of the job that waits for it
    prepared = set()  # the (stage, method) pairs whose set-up the worker has run
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([listener, wake_read], [], [], 1.0)
            if wake_read in ready:
                os.read(wake_read, 512)
            _report_finished(jobs)
            if listener in ready:
                connection, _ = listener.accept()
                _start_job(connection, jobs, prepared, (listener, wake_read, wake_write))
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)


def _report_finished(jobs: dict) -> None:
    while jobs:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        connection = jobs.pop(pid, None)
        if connection is not None:
            _send(connection, {"status": os.waitstatus_to_exitcode(status)})
            connection.close()


def _start_job(connection: socket.socket, jobs: dict, prepared: set, worker_fds: tuple) -> None:
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    request = json.loads(message)
    if request["executable"] != sys.executable:  # a job in another environment (--use-conda)
        for fd in fds:
            os.close(fd)
        _send(connection, {"refused": f"the worker runs {sys.executable}"})
        connection.close()
        return
    if request.get("work"):
        _prepare(tuple(request["work"]), prepared)
    # Every object the worker holds is left out of the child's collections: a full collection in
    # the child would touch, and so copy, every page of them (1.2 CPU-seconds), maybe in a window.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        for item in worker_fds:
            item.close() if isinstance(item, socket.socket) else os.close(item)
        _run_child(connection, request, fds)
    for fd in fds:
        os.close(fd)
    jobs[pid] = connection
    _send(connection, {"pid": pid})


def _prepare(work: tuple[str, str], prepared: set) -> None:
    """Run the set-up of `work` (stage module, method) here, once, so that its jobs fork with it done.
    A failure is only logged: the job runs the same set-up itself, and fails there in its own log."""
    if work in prepared:
        return
    prepared.add(work)
    from joulebench.stages import prepare_before_window

    started = time.perf_counter()
    try:
        prepare_before_window(importlib.import_module(work[0]), work[1])
    except Exception:
        log.exception("warm worker: the set-up of %s %s failed", *work)
        return
    gc.collect()
    log.info("warm worker: prepared %s %s for this run's jobs (%.1f s)", *work, time.perf_counter() - started)


def _send(connection: socket.socket, message: dict) -> None:
    # OSError: the job's process is gone; its child has killed itself (_die_with).
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps(message).encode() + b"\n")


def _run_child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the job's process, run its script, exit with its status."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"], **{CHILD_VARIABLE: "1"})
    _apply_thread_limits(os.environ)
    script = request["script"]
    sys.argv = [script, *request["argv"][1:]]
    sys.path[0] = os.path.dirname(script)
    threading.Thread(target=_die_with, args=(connection,), daemon=True).start()
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)


def _apply_thread_limits(environ) -> None:
    """The job's thread count, which Snakemake passes in OMP_NUM_THREADS: OpenMP and BLAS read it
    when they load, and they loaded in the worker."""
    threads = environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _die_with(connection: socket.socket) -> None:
    """Kill this child when its job's process dies (Snakemake kills a job's process, not its child)."""
    while True:
        try:
            if not connection.recv(64):
                break
        except OSError:
            break
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------- job


def run_in_worker(work: tuple[str, str] | None = None) -> None:
    """Run this rule script in the run's warm worker and exit with its status; return at once (the
    caller then runs the script itself) where no worker answers. `work`, a (stage module, method)
    pair: the worker runs its set-up before forking this job, once for the run."""
    path = os.environ.get(SOCKET_VARIABLE)
    if not path or os.environ.get(CHILD_VARIABLE) or os.environ.get(SWITCH_VARIABLE) == "0":
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return
    request = {
        "executable": sys.executable,
        "script": os.path.abspath(sys.argv[0]),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "umask": _current_umask(),
        "env": dict(os.environ),
        "work": work,
    }
    socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
    replies = connection.makefile("r")
    reply = json.loads(replies.readline() or '{"refused": "no answer"}')
    if "pid" not in reply:
        connection.close()
        return
    child = reply["pid"]
    for number in FORWARDED:
        signal.signal(number, lambda signum, frame: os.kill(child, signum))
    line = replies.readline()
    if not line:  # the worker died: the job's outcome is unknown, so it failed
        print("joulebench: the warm worker died while running this job", file=sys.stderr)
        os._exit(1)
    code = json.loads(line)["status"]
    if code < 0:  # killed by a signal: die by the same one, as the script would have
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------- the run


def start(scripts_dir: str, log_path: str) -> subprocess.Popen | None:
    """Start the run's worker and wait until it accepts jobs; None (jobs start as before) where it
    is switched off or did not come up. Sets the socket variable for the run's jobs."""
    if os.environ.get(SWITCH_VARIABLE) == "0":
        return None
    path = f"/tmp/joulebench-warm-{os.getpid()}-{time.monotonic_ns()}.sock"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [scripts_dir, os.environ.get("PYTHONPATH")])),
    }
    # One thread while loading: OpenMP and BLAS keep no pools that the fork would leave behind.
    env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "joulebench.warm", path, str(os.getpid())]
    # Appended: a rerun's worker (after a failure, `--forcerun`) keeps the earlier runs' lines.
    with open(log_path, "a") as worker_log:
        worker_log.write(f"{RUN_HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')}, Snakemake pid {os.getpid()}\n")
        worker_log.flush()
        worker = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=worker_log, stderr=worker_log
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and worker.poll() is None:
        if Path(path).exists():
            os.environ[SOCKET_VARIABLE] = path
            return worker
        time.sleep(0.1)
    worker.kill()
    return None


def stop(worker: subprocess.Popen | None) -> None:
    os.environ.pop(SOCKET_VARIABLE, None)
    if worker is not None and worker.poll() is None:
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(sys.argv[1], int(sys.argv[2]))
