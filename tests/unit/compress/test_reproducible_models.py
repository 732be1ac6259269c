"""A quantized model file is the same bytes whichever checkout writes it, and loads to the same model."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from conftest import ROOT
from joulebench.compress import quantize

# A QAT quantization as the workflow's quantize rule runs it (torchao's patterns traced once, prepare,
# fake-quantized training steps, convert, save), on small_cnn with a few random batches.
QAT_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from joulebench.compress import pt2e_patterns
    from joulebench.compress import quantize
    from joulebench.models import build_model

    pt2e_patterns.keep_traced_patterns()
    torch.manual_seed(0)
    model = build_model({"arch": "small_cnn", "in_channels": 1, "num_classes": 10})
    batches = torch.rand(3, 8, 1, 8, 8)
    prepared = quantize.prepare_qat(model, batches[0, :2])
    prepared.train()
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for batch in batches:
        optimizer.zero_grad()
        prepared(batch).square().mean().backward()
        optimizer.step()
    quantize.save_exported(quantize.convert_qat(prepared), batches[0, :2], sys.argv[1])
    """
)


def _checkout_copy(directory):
    """The workflow's scripts copied under `directory`, as a second checkout would hold them."""
    shutil.copytree(
        ROOT / "workflow" / "scripts",
        directory / "workflow" / "scripts",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return directory


def _start_qat_run(checkout, model_path):
    """The QAT script run from `checkout`, importing joulebench from that checkout's copy."""
    script = checkout / "quantize_qat.py"
    script.write_text(QAT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(checkout / "workflow" / "scripts")}
    return subprocess.Popen(
        [sys.executable, str(script), str(model_path)],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # two QAT conversions side by side: 50 s on two cores, more under load
def test_qat_model_file_is_identical_from_two_checkouts(tmp_path):
    checkouts = [_checkout_copy(tmp_path / name) for name in ("checkout_a", "checkout_b")]
    model_paths = [checkout / "model.pt" for checkout in checkouts]
    runs = [_start_qat_run(checkout, path) for checkout, path in zip(checkouts, model_paths, strict=True)]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output

    assert _sha256(model_paths[0]) == _sha256(model_paths[1])
    example = torch.rand(5, 1, 8, 8)
    outputs = []
    for path in model_paths:
        lowered, reference = quantize.load_exported(path)
        with torch.no_grad():
            outputs.append((lowered(example), reference(example)))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])


def test_saved_program_names_no_source_paths_or_object_ids(tmp_path):
    """The archive's graph carries no stack traces (file paths) and no node provenance (object ids)."""
    graph = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    quantize.save_exported(quantize._export(graph, torch.rand(2, 4)), torch.rand(2, 4), tmp_path / "model.pt")
    with zipfile.ZipFile(tmp_path / "model.pt") as archive:
        program = json.loads(archive.read("archive/models/model.json"))
    node_metadata = [node["metadata"] for node in program["graph_module"]["graph"]["nodes"]]
    assert node_metadata, "the saved graph has nodes"
    assert not [key for metadata in node_metadata for key in metadata if key in ("stack_trace", "from_node")]
    assert str(ROOT) not in json.dumps(program)
