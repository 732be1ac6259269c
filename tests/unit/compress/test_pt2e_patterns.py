"""torchao's PT2E patterns traced once (joulebench.compress.pt2e_patterns): the same graphs, fewer traces."""

import copy

import pytest
import torch
import torch.nn.functional as F

from joulebench.compress import pt2e_patterns, quantize
from joulebench.models import build_model


def _pattern(conv_fn, has_bias: bool):
    def pattern(x, weight):
        return conv_fn(x, weight) + (1 if has_bias else 0)

    return pattern


def test_a_patterns_key_is_its_code_closure_and_input_shapes_not_values():
    x, w = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1)

    def key(conv_fn=F.conv2d, has_bias=True, inputs=(x, w), is_cuda=False, scale=1.0):
        kwargs = {"scale": torch.tensor([scale])}
        return pt2e_patterns.pattern_key(_pattern(conv_fn, has_bias), inputs, is_cuda, kwargs)

    # A new closure of the same function over the same values, with new random values: the same key.
    assert key() == key(inputs=(torch.randn(1, 1, 3, 3), w), scale=2.0)
    assert key(has_bias=False) != key()
    assert key(conv_fn=F.conv1d) != key()
    assert key(inputs=(torch.randn(1, 1, 4, 4), w)) != key()
    assert key(is_cuda=True) != key()
    # A closure over a tensor cannot be keyed safely: it is traced at every use, as before.
    captured = torch.ones(1)
    assert pt2e_patterns.pattern_key(lambda x: x + captured, (x,), False, {}) is None


def _qat_convert(model, example):
    prepared = quantize.prepare_qat(model, example)
    prepared.train()
    prepared(example)
    prepared.eval()
    return quantize.convert_qat(prepared)


@pytest.mark.slow  # torchao traces about 100 patterns twice over: about 45 s on 2 cores
def test_converting_with_traced_patterns_gives_the_same_int8_graph_without_tracing_again(monkeypatch):
    current = getattr(pt2e_patterns.importlib.import_module(pt2e_patterns._CALLERS[0]), pt2e_patterns._NAME)
    trace = current.trace if isinstance(current, pt2e_patterns.PatternCache) else current
    for name in pt2e_patterns._CALLERS:  # restored after the test
        monkeypatch.setattr(f"{name}.{pt2e_patterns._NAME}", trace)
    torch.manual_seed(0)
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10})
    example = torch.rand(4, 1, 8, 8)
    uncached = _qat_convert(copy.deepcopy(model), example)

    quantize.trace_before_window()
    cache = pt2e_patterns.keep_traced_patterns()
    assert cache.traced > 50  # the conv + batch-norm patterns of every conv kind, train/eval switches
    traced = cache.traced
    cached = _qat_convert(copy.deepcopy(model), example)
    assert cache.traced == traced  # the model's conversion traced no pattern itself
    assert cached.code == uncached.code
    assert torch.equal(cached(example), uncached(example))
