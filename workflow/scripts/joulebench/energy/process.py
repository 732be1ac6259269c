"""This process's own work as the meter counts it: CPU time (running loader workers included), the
host's busy time, peak memory, the packages imported, the process ids that are ours."""

import multiprocessing
import os
import resource
import sys

import psutil


def process_cpu_seconds() -> float:
    """CPU seconds of this process and of every process it started, running or ended."""
    running = multiprocessing.active_children()  # reaps the ended ones first
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + running_cpu_seconds(running)


def running_cpu_seconds(children) -> float:
    """CPU seconds of child processes that have not been reaped yet (DataLoader workers, which
    live as long as their loader; Zeus's polling processes), with their own reaped children. The
    kernel adds a child's time to RUSAGE_CHILDREN only once it is waited for, so without this a
    window that ends while they run misses their work and counts it as other processes'. The
    children are the ones multiprocessing started (listing every process of the host to find
    children costs milliseconds a window); read after RUSAGE_CHILDREN, one that ends in between
    is missed for that reading rather than counted twice."""
    total = 0.0
    for child in children:
        try:
            times = psutil.Process(child.pid).cpu_times()
        except (psutil.Error, TypeError):  # ended since it was listed, or not started
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def own_process_ids() -> set[int]:
    """This process and its running descendants: the processes whose work is the rule's own."""
    ids = {os.getpid()}
    for child in psutil.Process().children(recursive=True):
        ids.add(child.pid)
    return ids


def host_busy_cpu_seconds() -> float:
    """CPU seconds every process on the host has spent since boot (all cores, idle and iowait
    excluded)."""
    times = psutil.cpu_times()
    # Linux counts guest (virtual machine) time inside user and nice already: count it once.
    counted_twice = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - counted_twice


def imported_packages(before: frozenset) -> list[str]:
    """Top-level packages first imported since `before` (sys.modules then): importing is never the
    measured work, and its time (disk cache, bytecode) varies from run to run, so a stage imports
    what its work needs before its window opens. A window that still imports says so here."""
    return sorted({name.split(".")[0] for name in set(sys.modules) - before})


def peak_memory_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
