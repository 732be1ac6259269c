"""Result files: atomic, and the same content gives the same bytes (a rerun is byte-identical)."""

import torch

from joulebench import store
from joulebench.models import build_model


def test_saved_weights_are_byte_identical_across_saves(tmp_path):
    torch.manual_seed(0)
    state = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10}).state_dict()
    store.save_tensors(tmp_path / "a" / "model.pt", state)
    store.save_tensors(tmp_path / "b" / "model.pt", state)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    loaded = store.load_tensors(tmp_path / "a" / "model.pt")
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file left behind
