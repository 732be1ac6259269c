"""Interleaved inference comparison: every variant of one model and seed, measured in one job.

Measuring each variant in its own job, minutes apart, mixes the machine's drift (temperature,
clocks, other load) into the differences between variants. Here every variant is loaded into one
process and measured in rounds: each round measures every variant once, in an order shuffled
afresh (ABC, CAB, BCA...), with a random pause before each window (joulebench.evaluate.protocol). The
per-round differences against the baseline are paired: whatever drifted during a round drifted for
both. The report's inference verdicts and break-evens rest on them.

A variant runs where it would be deployed (its `Placement`: float models on the GPU where there is
one, int8 models on the CPU). A window of a CPU variant leaves out the GPU's joules (that GPU only
idled); the row's `device` says which device class the figure belongs to.
"""

import logging
import random
from dataclasses import dataclass

from torch import nn

from joulebench.devices import Placement
from joulebench.evaluate.accuracy import accuracy
from joulebench.evaluate.metrics import inference_autocast
from joulebench.evaluate.protocol import Protocol, interleaved_order, random_gap, repeat_for, warm_up

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One variant's model, where it runs and in which precision."""

    model: nn.Module
    placement: Placement
    precision: str


def device_joules(record: dict, placement: Placement) -> float:
    """The window's joules of the devices this variant computes on: a CPU variant's window leaves
    out GPU parts (the metered GPU idled), a GPU variant's keeps every part."""
    if placement.gpu is not None:
        return record["joules"]
    return sum(part["joules"] for part in record["parts"] if not part["part"].startswith("gpu"))


def interleaved_rounds(
    candidates: dict[str, Candidate], arrays: dict, settings: dict, meter, seed: int
) -> list[dict]:
    """Rows of (round, position, variant, joules per 1k samples, ...) for every window measured."""
    test_count = len(arrays["test_y"])
    passes = {}
    protocols = {}
    for name, candidate in candidates.items():
        # Not chained: a lowered int8 graph's .eval() returns None (joulebench.compress.quantize).
        candidate.model.eval()
        candidate.model.to(candidate.placement.torch_device)
        precision, autocast = inference_autocast(candidate.precision, candidate.placement.torch_device)
        candidate.precision = precision

        def test_pass(model=candidate.model, autocast=autocast) -> float:
            with autocast:
                return accuracy(model, arrays, "test", settings["batch_size"])

        passes[name] = test_pass
        protocols[name] = Protocol.from_config(settings, candidate.placement.torch_device.type)
    # Every variant gets the same number of rounds: the most any of their protocols asks for.
    rounds = max(protocol.rounds for protocol in protocols.values())
    generator = random.Random(seed)
    rows = []
    with next(iter(protocols.values())).fixed_threads():
        for name, test_pass in passes.items():
            warm_up(test_pass, protocols[name].warmup_seconds)
        for round_index, order in enumerate(interleaved_order(list(candidates), rounds, seed), start=1):
            for position, name in enumerate(order, start=1):
                candidate, protocol = candidates[name], protocols[name]
                gap = random_gap(generator, protocol)
                with meter.window(f"round{round_index}:{name}") as window:
                    count, seconds = repeat_for(passes[name], protocol)
                record = window.record
                joules = device_joules(record, candidate.placement)
                rows.append(
                    {
                        "round": round_index,
                        "position": position,
                        "variant": name,
                        "device": candidate.placement.torch_device.type,
                        "precision": candidate.precision,
                        "passes": count,
                        "seconds": seconds,
                        "gap_seconds": gap,
                        "joules": joules,
                        "joules_per_1k": joules * 1000 / (count * test_count),
                        "source": record["source"],
                        "busy_host": record["busy_host"],
                        "busy_gpu": record["busy_gpu"],
                    }
                )
            log.info("round %d/%d measured in order %s", round_index, rounds, ", ".join(order))
    return rows
