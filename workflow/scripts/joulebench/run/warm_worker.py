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
then runs that work's set-up before the window once (joulebench.run.prepare.prepare_before_window, such
as tracing torchao's PT2E patterns), and the job and every job forked after it inherit the result.

Where no worker answers (SLURM jobs, scripts run outside Snakemake, JOULEBENCH_WARM=0, a host
with a GPU, a worker that failed to start), the job runs in its own interpreter, and Snakemake's
console says why.

CUDA and NVML. A process forked from one that has started the CUDA driver cannot use CUDA ("Cannot
re-initialize CUDA in forked subprocess"), and torch starts it on the first device query:
`torch.cuda.is_available()`, which torchao runs when it is imported and again when it traces its
conv-bn patterns. So the worker runs only where no GPU can be used at all (`gpu_on_host` finds
none: no NVML, no AMD SMI, no GPU device node), and in it torch's device query answers "no GPU"
without reaching the driver (`_cuda_answers_no_gpu`), a true answer on such a host; each child gets
the real query back before its script runs. Before it accepts the first job, and again after each
set-up it runs for a job, the worker forks a probe and refuses to serve unless the probe starts
clean: torch's fork guard not armed, CUDA not initialised, NVML not loaded (`_check_fork_is_clean`).
A library that found another way to the driver turns the worker off; it can never hand a job
poisoned CUDA state.

Why by hand: no library forks prepared interpreters for Snakemake jobs; multiprocessing's
forkserver preloads modules the same way but only for its own Process objects, not for a script
that Snakemake starts with its own standard streams, environment and exit status.
"""

import atexit
import contextlib
import gc
import glob
import importlib
import json
import logging
import os
import runpy
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from joulebench.run.environment import CHILD_VARIABLE, SOCKET_VARIABLE, SWITCH_VARIABLE

log = logging.getLogger(__name__)

# What every job imports before its work (and each stage's WORK_MODULES): imported once, here.
PRELOAD = (
    "numpy",
    "threadpoolctl",
    "torch",
    "torch.utils.flop_counter",
    "torch.export",
    "joulebench.data.stages",
    "joulebench.train.stages",
    "joulebench.compress.stages",
    "joulebench.evaluate.stages",
    "joulebench.energy.meter",
    "joulebench.train.loop",
    "joulebench.evaluate.metrics",
    "joulebench.evaluate.interleaved",
    "joulebench.compress.quantize",
    "joulebench.compress.prune",
    "joulebench.data.clean",
    "joulebench.data.sample",
    "joulebench.data.augment",
    "joulebench.data.sources",
)
# Signals a job's process receives on its own (a user's kill, a timeout); passed on to the child.
# SIGINT is not: Ctrl-C reaches the whole process group, the child included.
FORWARDED = (signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT_S = 180
# The line that opens each run's part of the worker's log.
RUN_HEADER = "== warm worker for the run started"
# The worker's exit status when it refuses to serve (it would hand jobs CUDA or NVML state).
REFUSED_STATUS = 3
# Device nodes of GPUs that torch can use: NVIDIA (Linux), AMD ROCm, NVIDIA/others under WSL 2.
GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


# torch._C's entries to the CUDA driver, replaced in the worker (_cuda_answers_no_gpu); name -> real.
_REAL_CUDA_ENTRIES: dict = {}


def _cuda_answers_no_gpu() -> None:
    """In the worker: torch's CUDA device query answers 0 GPUs and its CUDA start-up refuses, both
    without reaching the driver (whose start arms torch's fork guard, even where it finds no GPU).
    The worker runs only where gpu_on_host found none, so the answer is true."""
    import torch

    def refuse():
        raise RuntimeError("the warm worker never starts CUDA: this host has no GPU it could use")

    for name, stand_in in (("_cuda_getDeviceCount", lambda: 0), ("_cuda_init", refuse)):
        if hasattr(torch._C, name):  # a CPU-only build of torch has neither
            _REAL_CUDA_ENTRIES[name] = getattr(torch._C, name)
            setattr(torch._C, name, stand_in)


def _real_cuda_entries() -> None:
    """In a forked child: torch's own CUDA entries again, before the job's script runs."""
    import torch

    for name, real in _REAL_CUDA_ENTRIES.items():
        setattr(torch._C, name, real)


def _check_fork_is_clean() -> str | None:
    """What a job forked now would inherit of CUDA or NVML state, or None where nothing: CUDA
    initialised, the NVML library loaded, or torch's fork guard armed (seen in a forked probe)."""
    import torch

    pynvml = sys.modules.get("pynvml")
    if torch.cuda.is_initialized():
        return "CUDA is initialised in the worker"
    if pynvml is not None and getattr(pynvml, "nvmlLib", None) is not None:
        return "the NVML library is loaded in the worker"
    probe = os.fork()
    if probe == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    _, status = os.waitpid(probe, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "a process forked from the worker could not use CUDA (something started the CUDA driver)"
    return None


def gpu_on_host() -> str | None:
    """Why a job on this host could compute on a GPU, or None: a GPU device node exists, or NVML or
    AMD SMI answers (through Zeus, which the jobs meter with). Runs in Snakemake's process, whose
    jobs are new programs (fork + exec) that inherit none of its state."""
    nodes = sorted(node for pattern in GPU_DEVICE_NODES for node in glob.glob(pattern))
    if nodes:
        return f"this host has GPU device nodes ({', '.join(nodes[:3])})"
    from zeus.device import gpu

    if gpu.nvml_is_available():
        return "NVML answers on this host (an NVIDIA GPU)"
    if gpu.amdsmi_is_available():
        return "AMD SMI answers on this host (an AMD GPU)"
    return None


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
    """Accept jobs on the Unix socket `path` until SIGTERM or until process `parent` is gone; exit
    with REFUSED_STATUS, before accepting any, where a forked job would not start clean."""
    _cuda_answers_no_gpu()
    preload()
    problem = _check_fork_is_clean()
    if problem:
        log.error("warm worker: not serving jobs: %s", problem)
        sys.exit(REFUSED_STATUS)
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
    accepting = True
    try:
        # After it stops accepting, the worker still reports the jobs it runs until they end.
        while os.getppid() == parent and (accepting or jobs):
            ready, _, _ = select.select([listener, wake_read] if accepting else [wake_read], [], [], 1.0)
            if wake_read in ready:
                os.read(wake_read, 512)
            _report_finished(jobs)
            if accepting and listener in ready:
                connection, _ = listener.accept()
                accepting = _start_job(connection, jobs, prepared, (listener, wake_read, wake_write))
                if not accepting:  # later jobs find no socket and start in their own interpreters
                    listener.close()
                    Path(path).unlink(missing_ok=True)
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


def _start_job(connection: socket.socket, jobs: dict, prepared: set, worker_fds: tuple) -> bool:
    """Fork the job `connection` asks for; False where the worker must stop accepting jobs (the
    job's set-up left state that a forked job would inherit: this job then starts on its own)."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    request = json.loads(message)
    if request["executable"] != sys.executable:  # a job in another environment (--use-conda)
        _refuse(connection, fds, f"the worker runs {sys.executable}")
        return True
    if request.get("work") and _prepare(tuple(request["work"]), prepared):
        problem = _check_fork_is_clean()
        if problem:
            log.error("warm worker: no more jobs after the set-up of %s %s: %s", *request["work"], problem)
            _refuse(connection, fds, problem)
            return False
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
    return True


def _refuse(connection: socket.socket, fds: list[int], reason: str) -> None:
    """Answer a job that it must run in its own interpreter."""
    for fd in fds:
        os.close(fd)
    _send(connection, {"refused": reason})
    connection.close()


def _prepare(work: tuple[str, str], prepared: set) -> bool:
    """Run the set-up of `work` (stage module, method) here, once, so that its jobs fork with it done;
    True where it ran now. A failure is only logged: the job runs the same set-up itself, and fails
    there in its own log."""
    if work in prepared:
        return False
    prepared.add(work)
    from joulebench.run.prepare import prepare_before_window

    started = time.perf_counter()
    try:
        prepare_before_window(importlib.import_module(work[0]), work[1])
    except Exception:
        log.exception("warm worker: the set-up of %s %s failed", *work)
        return True
    gc.collect()
    log.info("warm worker: prepared %s %s for this run's jobs (%.1f s)", *work, time.perf_counter() - started)
    return True


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
    _real_cuda_entries()
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


COLD = "joulebench: each job starts in its own interpreter"


def start(scripts_dir: str, log_path: str) -> tuple[subprocess.Popen | None, str]:
    """Start the run's worker and wait until it accepts jobs; sets the socket variable for the
    run's jobs. Returns the worker (None where it is switched off, the host has a GPU, or it did
    not come up) and a line for Snakemake's console that says how jobs start, and why."""
    if os.environ.get(SWITCH_VARIABLE) == "0":
        return None, f"{COLD} ({SWITCH_VARIABLE}=0)"
    gpu = gpu_on_host()
    if gpu:
        return None, f"{COLD}, not from a warm worker: {gpu}, and CUDA cannot be used in a forked process"
    try:
        directory = socket_directory()
    except OSError as error:
        return None, f"{COLD}: no private directory for the warm worker's socket ({error})"
    sweep_sockets(directory)
    path = str(directory / f"{os.getpid()}-{time.monotonic_ns()}.sock")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [scripts_dir, os.environ.get("PYTHONPATH")])),
    }
    # One thread while loading: OpenMP and BLAS keep no pools that the fork would leave behind.
    env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "joulebench.run.warm_worker", path, str(os.getpid())]
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
            return worker, f"joulebench: jobs start from the warm worker (pid {worker.pid}, log {log_path})"
        time.sleep(0.1)
    if worker.poll() is None:
        worker.kill()
        why = f"it was not ready after {READY_TIMEOUT_S} s"
    else:
        why = f"it exited with status {worker.returncode}: {_last_line(log_path)}"
    worker.wait()
    return None, f"{COLD}: the warm worker did not start ({why}; see {log_path})"


def _last_line(log_path: str) -> str:
    lines = Path(log_path).read_text().strip().splitlines()
    return lines[-1] if lines else "its log is empty"


def socket_directory() -> Path:
    """This user's directory for worker sockets, mode 0700, so no other user can send a job to a
    worker; raises OSError where the path exists but is not such a directory."""
    directory = Path(tempfile.gettempdir()) / f"joulebench-warm-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    facts = directory.lstat()
    if not stat.S_ISDIR(facts.st_mode) or facts.st_uid != os.getuid() or facts.st_mode & 0o077:
        raise OSError(f"{directory} is not a directory of this user's alone (mode 0700): remove it")
    return directory


def sweep_sockets(directory: Path) -> None:
    """Remove the sockets of workers whose Snakemake process is gone (a run killed with SIGKILL
    leaves its socket behind); each socket is named after that process's pid."""
    for socket_path in directory.glob("*.sock"):
        pid = socket_path.name.split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            socket_path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(worker: subprocess.Popen | None) -> None:
    os.environ.pop(SOCKET_VARIABLE, None)
    if worker is not None and worker.poll() is None:
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(sys.argv[1], int(sys.argv[2]))
