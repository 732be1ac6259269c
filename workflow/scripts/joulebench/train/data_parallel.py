"""Data-parallel training (`technique: data_parallel`) and the attribution of its energy.

The train_model job starts N workers (joulebench.train.distributed: torchrun locally, srun under SLURM).
Every rank trains a DistributedDataParallel replica of the baseline recipe on its shard of the
training split, with batch size training.batch_size / N, so the global batch and the learning rate
are the baseline's. Rank 0 writes the outputs (the unwrapped module's state dict: the same
model.pt a single process saves).

Energy is counted once per node, never once per rank. Device counters (NVML, RAPL) see the whole
device, so N ranks each metering would book every joule N times. Instead:

- the rank with LOCAL_RANK 0 on each node meters the devices its node's ranks compute on (the
  GPU of each of them, by CUDA index, and the CPU packages); other GPUs of the node, idle or
  another user's, are never metered; the other ranks start no Zeus monitor at all;
- the Green Algorithms estimate (CPU without RAPL) charges CPU time: at each window's end every
  rank reports its own CPU seconds and peak memory (all_gather), and the measuring rank charges
  the sum over the ranks of its node, once. The same sum is left out of "other processes", so
  sibling ranks do not flag the window busy_host;
- the node records of each window are gathered to every rank and summed once (`combine_windows`):
  the rule's record lists, per node, its host, devices, the rank that measured them and the CPU
  seconds of each rank.

Windows start and end at a barrier, so every rank's work of an epoch lies inside its window.
Every rank validates on the whole validation split (the replicas are identical, so they agree on
early stopping); history.csv's train loss and accuracy are rank 0's shard's.

A killed job resumes like a single-process training (joulebench.train.resume, joulebench.train.checkpoint),
from the same checkpoint file: after each epoch every rank hands rank 0 its RNG states (the
all_gather is the barrier: every rank has finished the epoch), and rank 0 writes the checkpoint
atomically with the replicas' weights and optimizer state (identical on every rank) and each rank's
RNG states. A rerun loads it on every rank, each taking its own RNG states, and refuses a
checkpoint of another run. The record's `nodes` describe this attempt; the checkpointed epochs of
earlier attempts are added to its totals (`resumed`).
"""

import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from joulebench import store
from joulebench.energy import host_speed
from joulebench.energy.boundary import energy_boundary
from joulebench.energy.estimate import EstimateModel
from joulebench.energy.meter import EnergyMeter, Window, flagged_windows
from joulebench.energy.process import peak_memory_gb, process_cpu_seconds
from joulebench.train.checkpoint import Checkpointer
from joulebench.train.distributed import Rank, backend, placement_of, run_workers

log = logging.getLogger(__name__)

# Numeric estimate fields that add up over nodes (the model's constants do not).
ADDITIVE_ESTIMATE = ("cpu_joules", "memory_joules", "gpu_joules", "joules", "cpu_seconds", "peak_rss_gb")


def shard_arrays(arrays: dict, rank: int, world_size: int) -> dict:
    """This rank's share of the training split: every world_size-th image from `rank`, padded by
    wrapping around so every rank has the same count (and the same number of batches: DDP needs
    every rank to take part in every gradient all-reduce), as torch's DistributedSampler does."""
    count = len(arrays["train_y"])
    per_rank = -(-count // world_size)
    mine = (np.arange(per_rank * world_size) % count)[rank::world_size]
    return {key: (value[mine] if key.startswith("train_") else value) for key, value in arrays.items()}


def _gather(value) -> list:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def combine_windows(node_records: list[dict]) -> dict:
    """One window's record over the job's nodes: each node's devices and parts once, summed.

    With several nodes, device and part names are prefixed by their host (two nodes both have a
    `cpu0`); start and end span all nodes' windows.
    """
    several = len(node_records) > 1

    def named(record, name):
        return f"{record['node']['host']}/{name}" if several else name

    estimate = dict(node_records[0]["estimate"])
    for key in ADDITIVE_ESTIMATE:
        values = [r["estimate"].get(key) for r in node_records]
        estimate[key] = None if all(v is None for v in values) else sum(v or 0.0 for v in values)
    sources = {source for r in node_records for source in r["source"].split("+")}
    return {
        "window": node_records[0]["window"],
        "start_unix": min(r["start_unix"] for r in node_records),
        "end_unix": max(r["end_unix"] for r in node_records),
        "wall_time_s": max(r["wall_time_s"] for r in node_records),
        "measured": all(r["measured"] for r in node_records),
        "joules": sum(r["joules"] for r in node_records),
        "measured_joules": sum(r["measured_joules"] for r in node_records),
        "estimated_joules": sum(r["estimated_joules"] for r in node_records),
        "source": "+".join(sorted(sources)),
        "parts": [{**p, "part": named(r, p["part"])} for r in node_records for p in r["parts"]],
        "short_window": any(r["short_window"] for r in node_records),
        "other_processes_cpu_share": max(r["other_processes_cpu_share"] for r in node_records),
        "busy_host": any(r["busy_host"] for r in node_records),
        "other_gpu_processes": _other_gpu_processes(node_records, named),
        "busy_gpu": any(r["busy_gpu"] for r in node_records),
        **host_speed.of_nodes(node_records),
        "devices": {named(r, name): d for r in node_records for name, d in r["devices"].items()},
        "estimate": estimate,
        "nodes": [{**r["node"], "joules": r["joules"]} for r in node_records],
    }


def _other_gpu_processes(node_records: list[dict], named) -> list[dict] | None:
    """Every node's other processes on its metered GPUs, device names as in the combined record;
    None where any node could not tell."""
    if any(r["other_gpu_processes"] is None for r in node_records):
        return None
    return [{**p, "device": named(r, p["device"])} for r in node_records for p in r["other_gpu_processes"]]


def node_meter(rule: str, estimate: EstimateModel, placement, gpu_indices: list[int]) -> EnergyMeter:
    """The meter of one node: the GPUs its ranks compute on (`gpu_indices`, CUDA indices, where
    NVML can read them, each matched to NVML by UUID) and the CPU packages. The placement's own
    GPU decides whether NVML is usable at all."""
    from zeus.monitor import ZeusMonitor

    from joulebench.devices import Placement
    from joulebench.energy.gpu_access import probe_gpu

    monitor = None
    if gpu_indices and placement.gpu is not None and probe_gpu(placement).metered:
        on_cuda = placement.torch_device.type == "cuda"
        devices = {
            gpu: torch.device("cuda", gpu) if on_cuda else placement.torch_device for gpu in gpu_indices
        }
        accesses = [probe_gpu(Placement(device, gpu)) for gpu, device in devices.items()]
        metered = sorted(access.index for access in accesses if access.metered)
        instant_power = all(access.instant_power for access in accesses if access.metered)
        monitor = ZeusMonitor(gpu_indices=metered, approx_instant_energy=instant_power)
    return EnergyMeter(rule, estimate, placement, monitor)


class DataParallelMeter:
    """What train() needs of a meter (`placement`, `window(name)`), for one rank of N.

    Every rank enters and leaves the same windows (they are collective); only LOCAL_RANK 0 of each
    node holds an EnergyMeter. Each closed window's record is the sum over nodes, on every rank.
    """

    def __init__(self, rule: str, estimate: EstimateModel, rank: Rank, placement):
        self.rule = rule
        self.rank = rank
        self.placement = placement
        announced = _gather((rank.host, rank.rank, rank.local_rank, placement.gpu, os.getpid()))
        peers = [p for p in announced if p[0] == rank.host]
        self.node_ranks = [r for _, r, _, _, _ in peers]
        measuring = [r for _, r, local, _, _ in peers if local == 0]
        if len(measuring) != 1:
            raise RuntimeError(f"node {rank.host}: ranks {measuring} claim LOCAL_RANK 0; expected one")
        self.measuring_rank = measuring[0]
        # The GPUs this node's ranks compute on, and no other GPU of the node.
        self.node_gpus = sorted({gpu for _, _, _, gpu, _ in peers if gpu is not None})
        self.meter = None
        if rank.rank == self.measuring_rank:
            self.meter = node_meter(rule, estimate, placement, self.node_gpus)
            # The node's other ranks compute on its GPUs as part of this job, not as other processes.
            self.meter.peer_pids = {pid for *_, pid in peers}
        self.windows: list[dict] = []
        self.total: dict | None = None
        self._record: dict | None = None

    @property
    def measures(self) -> bool:
        return self.meter is not None

    def _begin(self, name: str) -> Window:
        # The host-speed probe before the barrier: every rank's work starts inside the window.
        if self.measures:
            self.meter.probe_host(name)
        self.placement.synchronize()
        dist.barrier()
        if self.measures:
            return self.meter._begin(name, probe=False)
        return Window(name=name, cpu_seconds_start=process_cpu_seconds())

    def _end(self, window: Window) -> tuple[dict, dict | None]:
        """Close the window on every rank; returns (the sum over nodes, this node's own record)."""
        self.placement.synchronize()
        usage = {
            "host": self.rank.host,
            "rank": self.rank.rank,
            "cpu_seconds": process_cpu_seconds() - window.cpu_seconds_start,
            "peak_rss_gb": peak_memory_gb(),
        }
        usages = [u for u in _gather(usage) if u["host"] == self.rank.host]
        own = None
        if self.measures:
            own = self.meter._end(
                window,
                cpu_seconds=sum(u["cpu_seconds"] for u in usages),
                memory_gb=sum(u["peak_rss_gb"] for u in usages),
            )
            own["node"] = {
                "host": self.rank.host,
                "measured_by_rank": self.rank.rank,
                "ranks": self.node_ranks,
                "devices": {
                    name: {k: d[k] for k in ("name", "device_id", "source")}
                    for name, d in own["devices"].items()
                },
                "cpu_seconds_by_rank": {str(u["rank"]): u["cpu_seconds"] for u in usages},
            }
        combined = combine_windows([r for r in _gather(own) if r is not None])
        window.record = combined
        return combined, own

    @contextmanager
    def window(self, name: str):
        window = self._begin(name)
        yield window
        self.windows.append(self._end(window)[0])

    def __enter__(self):
        self._rule_window = self._begin(f"rule:{self.rule}")
        return self

    def __exit__(self, exc_type, *exc_info):
        if exc_type is not None:
            return False  # no collective after a failure: the launcher stops every rank
        self.total, own = self._end(self._rule_window)
        if self.measures:
            self.meter.total = own
        bases = [r for r in _gather(self.meter.record() if self.measures else None) if r is not None]
        self._record = self._rule_record(bases)
        return False

    def _rule_record(self, bases: list[dict]) -> dict:
        """The rule's record: rank 0's node facts, the totals summed over nodes, every window."""
        base = bases[0]
        record = {key: base[key] for key in ("schema", "rule", "placement", "gpu", "hardware")}
        record |= {key: base[key] for key in ("host", "slurm_job_id", "slurm_node", "cuda_visible_devices")}
        record |= {key: base[key] for key in ("zeus_version", "cpu_model")}
        if len(bases) > 1:
            record["hardware"] = {f"{b['host']}/{k}": v for b in bases for k, v in b["hardware"].items()}
        everything = [self.total, *self.windows]
        record |= {key: value for key, value in self.total.items() if key != "window"}
        record |= flagged_windows(everything)
        record["boundary"] = energy_boundary(self.total["parts"], record["hardware"])
        record["windows"] = self.windows
        record["data_parallel"] = {
            "world_size": self.rank.world_size,
            "backend": backend(),
            "attribution": "one measuring rank (LOCAL_RANK 0) per node meters the GPUs its node's "
            "ranks compute on and the CPU packages, and estimates the CPU time of all its node's ranks; "
            "node totals summed once",
        }
        return record

    def record(self) -> dict:
        if self._record is None:
            raise RuntimeError("DataParallelMeter.record() called before the meter was closed")
        return self._record


class RankCheckpointer(Checkpointer):
    """The per-epoch checkpoint of a data-parallel run: one file, written by rank 0, with the RNG
    states of every rank (the replicas' weights and optimizer states are the same on all ranks)."""

    def __init__(self, path, run_fingerprint: str, rank: Rank):
        super().__init__(path, run_fingerprint)
        self.rank = rank

    def load(self) -> dict | None:
        state = super().load()
        return None if state is None else {**state, "rng": state["rng"][self.rank.rank]}

    def save(self, state: dict) -> None:
        rng_states = _gather(state["rng"])  # waits for every rank to finish the epoch
        if self.rank.is_main:
            super().save({**state, "rng": rng_states})


def launch_training(spec: dict, processes: int) -> None:
    """In the train_model job: run `processes` workers on `spec` (the rule's inputs, settings and
    output folder) and wait for them. The job's threads are shared out: threads // processes each."""
    from joulebench.train.checkpoint import exit_on_sigterm

    threads = max(1, torch.get_num_threads() // processes)
    # SIGTERM (scancel, Snakemake stopping the job) stops the workers before the job exits.
    with exit_on_sigterm():
        run_workers(processes, threads, [json.dumps(spec)], sys.stderr)


def train_worker(spec: dict) -> None:
    """One rank: join the group, train its shard under DDP, and (rank 0) write the outputs."""
    from torch.nn.parallel import DistributedDataParallel

    from joulebench.data.sources import image_count
    from joulebench.models import build_model, check_input, model_recipe
    from joulebench.precision import numeric_flags
    from joulebench.train.checkpoint import exit_on_sigterm
    from joulebench.train.distributed import init_process_group, rank_from_env
    from joulebench.train.loop import seed_everything, train, training_settings, training_summary
    from joulebench.train.resume import run_fingerprint, with_prior_epochs, write_trained

    rank = rank_from_env()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank{rank.rank} %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("zeus").setLevel(logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with exit_on_sigterm():
        init_process_group(rank)
        placement = placement_of(rank)
        arrays, facts = store.load_arrays(spec["inputs"]["splits"]), store.read_json(spec["inputs"]["facts"])
        training = spec["training"]
        seed_everything(spec["seed"])
        shape = (facts["channels"], facts["num_classes"], facts["image_size"])
        recipe = model_recipe(spec["model"], *shape, precision_requested="fp32")
        model = build_model(recipe)
        check_input(model, spec["model"], (facts["channels"], *facts["image_size"]), facts["num_classes"])
        settings = replace(
            training_settings(training, spec["seed"]),
            batch_size=training["batch_size"] // rank.world_size,
            target_val_accuracy=training.get("target_val_accuracy"),
            augmentation=tuple(spec["transforms"]),
        )
        shard = shard_arrays(arrays, rank.rank, rank.world_size)
        log.info(
            "rank %d of %d on %s (%s, CUDA_VISIBLE_DEVICES=%s): %s, batch %d",
            rank.rank, rank.world_size, rank.host, placement.torch_device,
            os.environ.get("CUDA_VISIBLE_DEVICES"), image_count(len(shard["train_y"]), "training"),
            settings.batch_size,
        )  # fmt: skip
        estimate = EstimateModel(**spec["estimate"])
        checkpointer = None
        if spec["checkpoint"]:
            run_facts = {**spec["data_facts"], "processes": rank.world_size}
            run = run_fingerprint(run_facts, recipe, settings)
            checkpointer = RankCheckpointer(spec["checkpoint"], run, rank)
        with DataParallelMeter("train_model", estimate, rank, placement) as meter:
            model.to(placement.torch_device)
            device_ids = [placement.gpu] if placement.gpu is not None else None
            replica = DistributedDataParallel(model, device_ids=device_ids)
            history = train(replica, shard, settings, meter, checkpointer=checkpointer)
        record = with_prior_epochs(meter.record(), checkpointer)
        if rank.is_main:
            parallel = {
                "processes": rank.world_size,
                "backend": backend(),
                "per_process_batch_size": settings.batch_size,
            }
            summary = {
                **training_summary(history, replace(settings, batch_size=training["batch_size"])),
                "precision_requested": "fp32",
                "resumed_after_epoch": checkpointer.resumed_after_epoch or None if checkpointer else None,
                "pretrained": None,
                "batch_size": training["batch_size"],
                "lr": settings.lr,
                "cpu_threads": torch.get_num_threads(),
                "data_parallel": parallel,
                "numerics": numeric_flags(),
            }
            record = {**record, "cpu_threads": torch.get_num_threads(), "numerics": summary["numerics"]}
            write_trained(spec["outputs"], model, recipe, history, record, summary)
            if checkpointer:
                checkpointer.remove()
        dist.barrier()
        dist.destroy_process_group()


# Zeus starts helper processes with `spawn`, which re-imports this file: nothing runs unless it is main.
if __name__ == "__main__":
    train_worker(json.loads(sys.argv[1]))
