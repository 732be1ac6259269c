"""Data-parallel processes: how they are launched, and who each one is.

A `data_parallel` training runs N worker processes (torch.distributed, one model replica each):

- outside SLURM, the job starts them with torchrun (`python -m torch.distributed.run --standalone
  --nproc_per_node N`), which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address;
- inside a SLURM allocation (SLURM_JOB_ID set: the job has N tasks and, on GPUs, N GPUs, see the
  rule's `tasks` and `gpu` resources), the job starts them with `srun --ntasks N`, and each
  worker reads its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, the rendezvous from
  MASTER_ADDR (the first node of the allocation) and MASTER_PORT (a free port chosen by the
  launcher).

Backend: gloo on the CPU, nccl on CUDA GPUs. Each rank computes on the GPU of its local rank.
"""

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from joulebench.devices import CPU, Placement

log = logging.getLogger(__name__)

# The worker module every rank runs (`python -m`); its body is under `if __name__ == "__main__"`.
WORKER_MODULE = "joulebench.train.data_parallel"
# The folder holding the joulebench package, put on the workers' PYTHONPATH.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# How long the launcher waits for the workers to stop after passing on SIGTERM, before SIGKILL.
STOP_GRACE_S = 30
# SLURM variables that name the allocation; the step-level ones (SLURM_NTASKS, SLURM_STEP_*,
# SLURM_CPUS_PER_TASK of the step we run in) must not leak into the inner srun.
SLURM_JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_CONF")


@dataclass(frozen=True)
class Rank:
    """Who this process is among the workers, and on which node."""

    rank: int
    world_size: int
    local_rank: int
    host: str

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs."""
        return self.rank == 0


def in_slurm_allocation(env=None) -> bool:
    return "SLURM_JOB_ID" in (os.environ if env is None else env)


def rank_from_env(env=None) -> Rank:
    """This worker's rank: torchrun's variables, else SLURM's (srun), else a single process."""
    env = os.environ if env is None else env
    host = socket.gethostname()
    if "RANK" in env:
        return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), host)
    if "SLURM_PROCID" in env:
        return Rank(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]), host)
    return Rank(0, 1, 0, host)


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def placement_of(rank: Rank) -> Placement:
    """The device this rank computes on: the GPU of its local rank, else the CPU."""
    if not torch.cuda.is_available():
        return CPU
    if rank.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"rank {rank.rank} is local rank {rank.local_rank} on {rank.host}, which has "
            f"{torch.cuda.device_count()} GPU(s) for this job (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')}): NCCL needs one GPU per process; train_model "
            "asks for one per process (its `gpu` resource): check that the profile does not override it"
        )
    return Placement(torch.device("cuda", rank.local_rank), rank.local_rank)


def init_process_group(rank: Rank) -> None:
    """Join the workers (env:// rendezvous; under srun the SLURM variables become torch's)."""
    os.environ.setdefault("RANK", str(rank.rank))
    os.environ.setdefault("WORLD_SIZE", str(rank.world_size))
    os.environ.setdefault("LOCAL_RANK", str(rank.local_rank))
    if torch.cuda.is_available():
        torch.cuda.set_device(rank.local_rank)
    torch.distributed.init_process_group(backend(), init_method="env://")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _first_node(env) -> str:
    """The first host of the allocation (rank 0 runs there), else this host."""
    nodelist = env.get("SLURM_JOB_NODELIST")
    if nodelist:
        try:
            names = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
            ).stdout.split()
            if names:
                return names[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return socket.gethostname()


def launch_command(processes: int, threads_per_process: int, args: list[str], env=None) -> tuple[list, dict]:
    """The command that starts `processes` workers running WORKER_MODULE with `args`, and its
    environment: srun inside a SLURM allocation, torchrun elsewhere."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(threads_per_process)
    worker = [sys.executable, "-m", WORKER_MODULE, *args]
    if in_slurm_allocation(env):
        master = _first_node(env)
        # Keep the allocation's identity only: the inner srun takes its geometry from its options.
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k in SLURM_JOB_VARIABLES}
        env = {k: v for k, v in env.items() if not k.startswith(("SRUN_", "SBATCH_"))}
        env |= {"MASTER_ADDR": master, "MASTER_PORT": str(free_port())}
        command = [
            "srun",
            # The job's own step (Snakemake's jobstep) holds CPUs of the allocation: share them.
            "--overlap",
            f"--ntasks={processes}",
            f"--cpus-per-task={threads_per_process}",
            "--kill-on-bad-exit=1",
            *worker,
        ]
        return command, env
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        WORKER_MODULE,
        *args,
    ]
    return command, env


class WorkersFailed(RuntimeError):
    """A data-parallel worker failed; its traceback is in the rule's log."""


def run_workers(processes: int, threads_per_process: int, args: list[str], log_stream=None) -> None:
    """Start the workers and wait for them; their output goes to `log_stream` (the rule's log).

    On SIGTERM (raised here as joulebench.train.checkpoint.Preempted) the workers are asked to stop and
    waited for, so none outlives the job and writes after it ended.
    """
    command, env = launch_command(processes, threads_per_process, args)
    log.info("starting %d data-parallel workers: %s", processes, " ".join(command[:8]) + " ...")
    stream = log_stream or sys.stderr
    stream.flush()
    process = subprocess.Popen(command, env=env, stdout=stream, stderr=stream)
    try:
        returncode = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if returncode != 0:
        raise WorkersFailed(f"data-parallel workers exited with status {returncode}; see the rule's log")
