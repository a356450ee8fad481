"""The torch-free restricted reader of PyTorch files (psm_jax/evaluators/torch_io.py)."""
from __future__ import annotations

import numpy as np
import pytest

from psm_jax.evaluators import torch_io
from tests import torch_files


def _sd():
    rng = np.random.default_rng(0)
    return {"a.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "a.bias": rng.normal(size=(4,)).astype(np.float32),
            "n": np.asarray(7, np.int64)}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_state_dict_round_trip(tmp_path, fmt):
    sd = _sd()
    path = tmp_path / "w.pth"
    (torch_files.write_zip if fmt == "zip" else torch_files.write_legacy)(path, sd)
    got = torch_io.read_state_dict(path)
    assert set(got) == set(sd)
    for k in sd:
        assert got[k].dtype == sd[k].dtype and np.array_equal(got[k], sd[k]), k


def test_torchscript_attribute_paths(tmp_path):
    sd = _sd()
    tree = torch_files.Module("__torch__.Net", {
        "layers": torch_files.Module("__torch__.torch.nn.modules.container.Sequential", {
            "conv": torch_files.Module("__torch__.Conv", {"weight": sd["a.weight"]})}),
        "output": torch_files.Module("__torch__.Linear", {"bias": sd["a.bias"]})})
    path = torch_files.write_zip(tmp_path / "m.pt", tree, root="m", script=True)
    got = torch_io.read_state_dict(path)
    assert set(got) == {"layers.conv.weight", "output.bias"}
    assert np.array_equal(got["layers.conv.weight"], sd["a.weight"])


def test_refuses_arbitrary_globals(tmp_path):
    path = torch_files.write_malicious(tmp_path / "evil.pth")
    with pytest.raises(torch_io.UnsafeCheckpointError, match="os.system"):
        torch_io.read_state_dict(path)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"hello")
    with pytest.raises(Exception):
        torch_io.read_state_dict(tmp_path / "x.pth")
