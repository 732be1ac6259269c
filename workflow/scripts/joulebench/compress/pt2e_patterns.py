"""torchao's PT2E pattern graphs, traced once per process instead of at every use.

torchao's PT2E passes find conv + batch-norm, dropout and batch-norm subgraphs by matching pattern
graphs, and trace each pattern with torch.export (Dynamo, strict) every time a pass runs.
`convert_pt2e` of a QAT model traces about 100 of them: 16-18 s on a 2-core CPU host,
where its fine-tuning epoch takes about 1 s. Every `.train()`/`.eval()` of an exported graph traces four
more. The patterns are torchao's own small functions, the same for every model. Its authors named
caching them as the fix that was never made (pytorch/pytorch#116440: "cache the patterns if
possible"). Why by hand: torchao has no switch for it.

`keep_traced_patterns` wraps torchao's tracing function with a cache. The key is:
- the pattern's code, closure and defaults;
- the shapes, dtypes and devices of its example inputs.

The input values are left out of the key: torchao's own calls draw them at random, so a graph cannot
depend on them. Each use gets its own copy, so a pass that edits a pattern cannot change the next.
A pattern whose closure holds anything other than plain values and functions is traced as before.

`joulebench.compress.quantize.trace_before_window` runs torchao's QAT prepare, train/eval switches
and convert, and our lowering, on a tiny conv + batch-norm model. A PT2E job calls it before its
window opens, so the window measures the work on the model, not the tracing of a library's fixed
patterns: that is set-up, like importing the library. In the run's warm worker it runs once for the
run (joulebench.run.warm_worker), and the jobs forked after it inherit the traced patterns. Where torchao's
function has moved, nothing is cached.
"""

import copy
import importlib
import logging
import types

import torch
from torch import nn

log = logging.getLogger(__name__)

# The torchao modules that call the tracing function by a name of their own.
_CALLERS = (
    "torchao.quantization.pt2e.utils",
    "torchao.quantization.pt2e.qat_utils",
    "torchao.quantization.pt2e.reference_representation_rewrite",
)
_NAME = "_get_aten_graph_module_for_pattern"
_PLAIN = (bool, int, float, str, type(None), torch.dtype, types.FunctionType, types.BuiltinFunctionType)


class PatternCache:
    """torchao's tracing function, remembering the graph of each pattern it has traced."""

    def __init__(self, trace):
        self.trace = trace
        self.graphs = {}
        self.traced = 0

    def __call__(self, pattern, example_inputs, is_cuda=False, **kwargs):
        key = pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return self.trace(pattern, example_inputs, is_cuda, **kwargs)
        if key not in self.graphs:
            self.graphs[key] = self.trace(pattern, example_inputs, is_cuda, **kwargs)
            self.traced += 1
        return copy.deepcopy(self.graphs[key])


def pattern_key(pattern, example_inputs, is_cuda: bool, kwargs: dict) -> tuple | None:
    """What a traced pattern graph depends on, or None where that cannot be told safely."""
    function = pattern.fn if isinstance(pattern, nn.Module) and hasattr(pattern, "fn") else pattern
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    captured = tuple(cell.cell_contents for cell in function.__closure__ or ())
    captured += tuple(function.__defaults__ or ())
    inputs = tuple(_input_key(value) for value in example_inputs)
    named = tuple((name, _input_key(value)) for name, value in sorted(kwargs.items()))
    if not all(isinstance(value, _PLAIN) for value in captured) or None in inputs:
        return None
    if any(key is None for _, key in named):
        return None
    return code, captured, inputs, named, is_cuda


def _input_key(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    return ("value", value) if isinstance(value, _PLAIN) else None


def keep_traced_patterns() -> PatternCache | None:
    """Route torchao's pattern tracing through one cache (idempotent); None where torchao changed."""
    callers = [importlib.import_module(name) for name in _CALLERS]
    current = getattr(callers[0], _NAME, None)
    if isinstance(current, PatternCache):
        return current
    if current is None or not all(hasattr(module, _NAME) for module in callers):
        log.warning("torchao has no %s: its PT2E patterns are traced at every use", _NAME)
        return None
    cache = PatternCache(current)
    for module in callers:
        setattr(module, _NAME, cache)
    return cache
