"""joulebench's energy figure beside the trackers users already know, on one small training run.

The same training as bench/bench_train_loop.py (small_cnn on the embedded digits, batch 64, AdamW,
one thread) runs once per arm and repeat, the arms interleaved (the order rotates every repeat):

- none:               no meter, no tracker: the wall-time reference for every overhead;
- joulebench:         joulebench.energy.meter.EnergyMeter (one window per epoch, as train_model runs);
- codecarbon:         CodeCarbon's OfflineEmissionsTracker, its default tracking_mode "machine";
- codecarbon_process: the same with tracking_mode="process";
- carbontracker:      carbontracker's CarbonTracker, CPU component, the training as its one epoch;
- eco2ai:             eco2ai's Tracker, its default cpu_processes="current".

Every tracker samples each second (CodeCarbon measure_power_secs=1, carbontracker update_interval=1,
eco2ai measure_period=1; their defaults are 15 s, 1 s and 10 s) and is given a country
(country_iso_code / alpha_2_code), so none looks its location up. No tracker reaches the network:
HTTP_PROXY and HTTPS_PROXY point at a closed port on loopback before any is imported, so a lookup
one still tries (carbontracker's geolocation) fails at once. A tracker that is not installed, does
not import or fails in its warm-up run (one epoch, before the timed repeats) is skipped with the
reason printed.

Printed: one row per tool with its median joules over the repeats, the ratio to joulebench's, where
its CPU power comes from (RAPL, a TDP table, a constant), how it counts memory, whether idle power
and a PUE are in its figure, its overhead on the training's wall time (wall time with the tool /
without, of the least disturbed runs and of the medians), and its fixed cost per run
(construction, start and stop, outside the timed training). On a host without RAPL and NVML,
joulebench's figure is its Green Algorithms estimate (CPU-seconds x power per core + wall seconds x
peak RSS x 0.3725 W/GB); the output says so.
docs/trackers.md explains the differences and converts between the figures.

The trackers are not joulebench's dependencies (requirements*.txt do not list them): install them
beside it from bench/requirements-trackers.txt, which says why the pynvml package goes again and
why eco2ai 0.3.12 does not run beside joulebench's pandas 3 and a current setuptools,

    .venv/bin/pip install -r bench/requirements-trackers.txt && .venv/bin/pip uninstall -y pynvml

    python bench/bench_trackers.py [--repeats 4] [--epochs 8] [--threads 1]
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

# Before any tracker is imported: whatever one requests goes to a closed port on this host.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ[_name] = "http://127.0.0.1:9"
for _name in ("NO_PROXY", "no_proxy"):
    os.environ.pop(_name, None)

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_train_loop import RECIPE, NoMeter  # noqa: E402

from joulebench.data import sources, splits  # noqa: E402
from joulebench.energy.meter import EnergyMeter  # noqa: E402
from joulebench.models import build_model  # noqa: E402
from joulebench.train.loop import TrainSettings, seed_everything, train  # noqa: E402

KWH = 3.6e6  # joules
COUNTRY_ISO3, COUNTRY_ISO2 = "FRA", "FR"  # any country: it sets carbon, not energy
SAMPLE_S = 1


@contextlib.contextmanager
def into(log_path: Path):
    """The trackers' own console output (stdout and stderr, Python's and C's) goes to a log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Bench:
    """One arm per tool; each run returns (training wall s, joules, fixed cost s, facts)."""

    def __init__(self, arrays: dict, settings: TrainSettings, workdir: Path):
        self.arrays, self.settings, self.workdir = arrays, settings, workdir
        self.log = workdir / "trackers.log"

    def training(self, meter) -> float:
        seed_everything(0)
        model = build_model(RECIPE)
        started = time.perf_counter()
        train(model, self.arrays, self.settings, meter)
        return time.perf_counter() - started

    def none(self):
        return self.training(NoMeter()), None, 0.0, {}

    def joulebench(self):
        fixed = time.perf_counter()
        meter = EnergyMeter("bench_trackers")
        with meter:
            fixed = time.perf_counter() - fixed
            wall = self.training(meter)
            closing = time.perf_counter()
        record = meter.record()
        return wall, record["joules"], fixed + time.perf_counter() - closing, {"record": record}

    def around_training(self, start, stop) -> tuple[object, float, float]:
        """Train under a tracker: (what `start` returned, training wall seconds, the seconds spent
        starting and stopping the tracker), the tracker's own output sent to the log."""
        fixed = time.perf_counter()
        with into(self.log):
            tracker = start()
        fixed = time.perf_counter() - fixed
        wall = self.training(NoMeter())
        closing = time.perf_counter()
        with into(self.log):
            stop(tracker)
        return tracker, wall, fixed + time.perf_counter() - closing

    def _codecarbon(self, mode: str):
        from codecarbon import OfflineEmissionsTracker

        def start():
            tracker = OfflineEmissionsTracker(
                country_iso_code=COUNTRY_ISO3,
                measure_power_secs=SAMPLE_S,
                tracking_mode=mode,
                save_to_file=False,
                log_level="error",
                allow_multiple_runs=True,
            )
            tracker.start()
            return tracker

        tracker, wall, fixed = self.around_training(start, lambda tracker: tracker.stop())
        emissions = tracker.final_emissions_data
        cpu = next(h for h in tracker._hardware if type(h).__name__ == "CPU")
        facts = {
            "cpu_mode": cpu._mode,
            "tdp_w": cpu._tdp,
            "cpu_model": emissions.cpu_model,
            "threads": emissions.cpu_count,
            "cpu_j": emissions.cpu_energy * KWH,
            "ram_j": emissions.ram_energy * KWH,
            "ram_w": emissions.ram_power,
            "ram_total_gb": emissions.ram_total_size,
            "pue": tracker._pue,
        }
        return wall, emissions.energy_consumed * KWH, fixed, facts

    def codecarbon(self):
        return self._codecarbon("machine")

    def codecarbon_process(self):
        return self._codecarbon("process")

    def carbontracker(self):
        from carbontracker.tracker import CarbonTracker

        def start():
            tracker = CarbonTracker(
                epochs=1,
                components="cpu",
                update_interval=SAMPLE_S,
                verbose=0,
                log_dir=str(self.workdir / "carbontracker"),
            )
            thread = tracker.tracker  # the tracker drops it once its last epoch ends
            tracker.epoch_start()
            return tracker, thread

        (_, thread), wall, fixed = self.around_training(start, lambda started: started[0].epoch_end())
        handler = thread.components[0].handler
        brand = getattr(handler, "cpu_brand", "")
        table = getattr(handler, "cpu_power_data", {})
        short = brand.split("@")[0].strip()
        matched = brand if brand in table else next((name for name in table if short in name), None)
        facts = {"handler": type(handler).__name__, "cpu_w": handler.tdp if hasattr(handler, "tdp") else None}
        facts |= {"brand": brand, "matched": matched}
        return wall, float(thread.total_energy_per_epoch().sum()) * KWH, fixed, facts

    def eco2ai(self):
        import eco2ai

        csv_path = self.workdir / "eco2ai.csv"

        def start():
            tracker = eco2ai.Tracker(
                project_name="joulebench",
                experiment_description="bench_trackers",
                file_name=str(csv_path),
                alpha_2_code=COUNTRY_ISO2,
                measure_period=SAMPLE_S,
                pue=1,
                ignore_warnings=True,
            )
            tracker.start()
            return tracker

        tracker, wall, fixed = self.around_training(start, lambda tracker: tracker.stop())
        kwh = float(pd.read_csv(csv_path)["power_consumption(kWh)"].iloc[-1])
        facts = {"tdp_w": tracker._cpu._tdp, "sockets": tracker._cpu._cpu_num, "cpu": tracker._cpu._name}
        return wall, kwh * KWH, fixed, facts


def codecarbon_tdp_origin(model: str) -> str:
    """Whether CodeCarbon's table lists the CPU model (its TDP) or it fell back to 4 W per thread."""
    try:
        from codecarbon.core.cpu import TDP

        listed = TDP()._get_cpu_power_from_registry(model)
    except Exception:  # an internal of CodeCarbon's: only the label depends on it
        return "its TDP table or 4 W per thread"
    return "its TDP table" if listed else f"'{model}' not in its table: 4 W per thread"


def describe(arm: str, facts: dict) -> tuple[str, str, str, str]:
    """(CPU power from, memory, idle power included, PUE) of one tool, from its last run."""
    if arm == "joulebench":
        record = facts["record"]
        estimate = record["estimate"]
        if record["measured"]:
            return record["source"], "RAPL DRAM where present", "yes (counters)", "no (carbon only)"
        cpu = (
            f"estimate: CPU-s x {estimate['power_per_core_w']:g} W/core ({estimate['power_per_core_source']})"
        )
        memory = f"peak RSS {estimate['peak_rss_gb']:.2f} GB x {estimate['memory_w_per_gb']} W/GB"
        return cpu, memory, "no", "no (carbon only)"
    if arm.startswith("codecarbon"):
        origin = codecarbon_tdp_origin(facts["cpu_model"])
        if facts["cpu_mode"] != "cpu_load":
            cpu = f"{facts['cpu_mode']}"
        elif arm == "codecarbon":
            cpu = f"TDP {facts['tdp_w']:g} W ({origin}) x (0.1 + 0.9 x machine load^3)"
        else:
            cpu = f"TDP {facts['tdp_w']:g} W ({origin}) x process CPU share"
        basis = f"{facts['ram_total_gb']:.1f} GB installed" if arm == "codecarbon" else "process RSS"
        memory = f"{facts['ram_w']:g} W constant (5 W per DIMM guessed from {basis}, min 2)"
        idle = "yes (10% TDP floor, RAM constant)" if arm == "codecarbon" else "RAM constant only"
        return cpu, memory, idle, f"x {facts['pue']:g} (pue, default 1)"
    if arm == "carbontracker" and facts["handler"] != "GenericCPU":
        return f"RAPL ({facts['handler']})", "RAPL DRAM where present", "yes (counters)", "x 1.58 built in"
    if arm == "carbontracker":
        cpu = (
            f"constant {facts['cpu_w']:g} W = TDP/2 of '{facts['matched']}' "
            f"(first table name containing '{facts['brand']}')"
        )
        return cpu, "not counted (RAPL DRAM only)", "yes (constant, any load)", "x 1.58 built in"
    if arm == "eco2ai":
        cpu = f"TDP {facts['tdp_w']:g} W x process CPU share (top) x {facts['sockets']} socket(s)"
        return cpu, "process RSS x 0.375 W/GB", "no", "x 1 (pue, default 1)"
    return "", "", "", ""


def available(arms: list[str]) -> dict[str, str]:
    """arm -> why it is skipped, for the trackers that do not import."""
    modules = {"codecarbon": "codecarbon", "carbontracker": "carbontracker.tracker", "eco2ai": "eco2ai"}
    skipped = {}
    for arm in arms:
        module = modules.get(arm.removesuffix("_process"))
        if module is None:
            continue
        try:
            __import__(module)
        except Exception as error:  # an ImportError, or a tracker failing at import
            skipped[arm] = f"does not import: {type(error).__name__}: {error}"
            if "pkg_resources" in str(error):
                skipped[arm] += " (setuptools 81 and later ship none; 'setuptools<81' brings it back)"
    return skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels, _ = sources.load_digits_source()
    arrays = splits.split_arrays(images, labels, 0.15, 0.2, seed=0)
    settings = TrainSettings(epochs=args.epochs, batch_size=64, lr=3e-3, seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="bench_trackers_"))
    bench = Bench(arrays, settings, workdir)
    arms = ["none", "joulebench", "codecarbon", "codecarbon_process", "carbontracker", "eco2ai"]
    with into(bench.log):
        skipped = available(arms)
    runs = {arm: [] for arm in arms}

    def run(arm: str) -> tuple | None:
        try:
            return getattr(bench, arm)()
        except Exception as error:
            with open(bench.log, "a") as log:
                traceback.print_exc(file=log)
            skipped[arm] = f"failed: {type(error).__name__}: {error} (pandas {pd.__version__})"
            return None

    # Warm-up, one epoch per arm: first-call allocations, lazy imports, each tracker's first set-up
    # (CodeCarbon caches what it detects); a tracker that fails here is skipped.
    bench.settings = replace(settings, epochs=1)
    for arm in arms:
        if arm not in skipped:
            run(arm)
    bench.settings = settings
    for repeat in range(args.repeats):
        for arm in arms[repeat % len(arms) :] + arms[: repeat % len(arms)]:
            if arm not in skipped and (result := run(arm)) is not None:
                runs[arm].append(result)
    reference = statistics.median(run[0] for run in runs["none"])
    fastest = min(run[0] for run in runs["none"])
    joulebench_j = statistics.median(run[1] for run in runs["joulebench"])
    record = runs["joulebench"][-1][3]["record"]
    print(
        f"small_cnn on digits: {args.epochs} epochs x {len(arrays['train_y'])} samples, batch 64, "
        f"{args.threads} thread(s), {args.repeats} interleaved repeats; training without any tool: "
        f"median {reference:.2f} s"
    )
    others = statistics.median(run[3]["record"]["other_processes_cpu_share"] for run in runs["joulebench"])
    print(
        f"CPU: {record['cpu_model']}, {os.cpu_count()} logical CPUs; other processes used {others:.0%} "
        "of them during joulebench's runs (median), which machine-wide figures include"
    )
    if record["measured"]:
        print(f"joulebench measured with counters: {record['source']}")
    else:
        estimate = record["estimate"]
        print(
            "No RAPL and no NVML on this host: joulebench's figure is its Green Algorithms estimate, "
            f"{estimate['cpu_seconds']:.2f} CPU-s x {estimate['power_per_core_w']:g} W/core = "
            f"{estimate['cpu_joules']:.1f} J CPU + {estimate['memory_joules']:.1f} J memory (last run)"
        )
    header = [
        "tool",
        "joules (median; range)",
        "ratio to joulebench",
        "CPU power from",
        "memory",
        "idle power in figure",
        "PUE",
        "wall with / without (min; median)",
        "fixed cost per run (s)",
    ]
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for arm in arms[1:]:
        if arm in skipped or not runs[arm]:
            continue
        joules = [run[1] for run in runs[arm]]
        walls = [run[0] for run in runs[arm]]
        fixed = statistics.median(run[2] for run in runs[arm])
        median = statistics.median(joules)
        cells = [
            arm,
            f"{median:.1f} ({min(joules):.1f}-{max(joules):.1f})",
            f"{median / joulebench_j:.2f}",
            *describe(arm, runs[arm][-1][3]),
            f"{min(walls) / fastest:.3f}; {statistics.median(walls) / reference:.3f}",
            f"{fixed:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    for arm, reason in skipped.items():
        print(f"\nskipped {arm}: {reason}")
    print(f"\nThe trackers' own output: {bench.log}")


if __name__ == "__main__":
    main()
