"""Convert FID Inception-v3 weights from PyTorch files to the ``.npz`` that ``inception.py`` reads.

    python -m psm_jax.evaluators.convert_inception IN OUT.npz [--use_torch]

IN is either of the files users already have (the format is detected from the parameter names):

* pytorch-fid's state dict ``pt_inception-2015-12-05-6726825d.pth``: torchvision names
  (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``).
* NVIDIA's TorchScript ``inception-2015-12-05.pt`` (StyleGAN2-ADA / MAT metrics): module
  attribute paths ``layers.<unit>.{weight, beta, mean, var}`` and ``output.{weight, bias}``;
  BN has no scale (taken as 1).

The file is read by the torch-free, allow-listed ``torch_io`` reader (no pickle code runs);
``--use_torch`` uses ``torch.load(weights_only=True)`` / ``torch.jit.load`` instead (extra ``[convert]``).

**Unverified here (no copy of the TorchScript file was available):** the TorchScript unit names
below (``_NVIDIA_UNITS``). They are taken from public code that loads that file: transcripts of its
``code/`` (``Layers_Sequential.forward`` calling ``conv, conv_1, conv_2, pool0, conv_3, conv_4,
pool1, mixed, mixed_1 ... mixed_10, pool2``; ``InceptionE.forward`` using ``tower_conv``,
``tower_mixed_conv(_1)``, ``tower_1_conv(_1)``, ``tower_1_mixed_conv(_1)``, ``tower_2_conv``) and a
weight-porting script that maps ``X.conv.weight -> X.weight``, ``X.bn.bias -> X.beta``,
``X.bn.running_mean -> X.mean``, ``X.bn.running_var -> X.var`` with a strict ``load_state_dict``.
If a real file disagrees, conversion fails loudly (missing / unexpected key named), never silently.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from psm_jax import cli
from psm_jax.evaluators import inception, torch_io

# Flax unit (pytorch-fid name) -> TorchScript unit, per block type.
_A = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
      "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
      "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
      "branch3x3dbl_3": "tower.conv_2"}
_C = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
      "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv", "branch7x7dbl_2": "tower_1.conv_1",
      "branch7x7dbl_3": "tower_1.conv_2", "branch7x7dbl_4": "tower_1.conv_3",
      "branch7x7dbl_5": "tower_1.conv_4", "branch_pool": "tower_2.conv"}
_D = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
      "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"}
_E = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
      "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
      "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
      "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
_BLOCKS = [("Mixed_5b", "mixed", _A), ("Mixed_5c", "mixed_1", _A), ("Mixed_5d", "mixed_2", _A),
           ("Mixed_6a", "mixed_3", _B), ("Mixed_6b", "mixed_4", _C), ("Mixed_6c", "mixed_5", _C),
           ("Mixed_6d", "mixed_6", _C), ("Mixed_6e", "mixed_7", _C), ("Mixed_7a", "mixed_8", _D),
           ("Mixed_7b", "mixed_9", _E), ("Mixed_7c", "mixed_10", _E)]
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}


def units() -> dict[str, str]:
    """Flax unit path (``Mixed_5b/branch1x1``) -> TorchScript unit path (``layers.mixed.conv``)."""
    out = {k: f"layers.{v}" for k, v in _STEM.items()}
    for flax_block, ts_block, table in _BLOCKS:
        out.update({f"{flax_block}/{k}": f"layers.{ts_block}.{v}" for k, v in table.items()})
    return out


def _conv(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))  # OIHW -> HWIO


def _take(sd: dict, key: str, used: set, what: str) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"{what}: missing parameter {key!r}")
    used.add(key)
    return np.asarray(sd[key], np.float32)


def detect_format(sd: dict) -> str:
    if "Conv2d_1a_3x3.conv.weight" in sd:
        return "pytorch_fid"
    if "layers.conv.weight" in sd:
        return "nvidia_torchscript"
    raise ValueError(f"unrecognised Inception weights: expected pytorch-fid keys "
                     f"(Conv2d_1a_3x3.conv.weight, ...) or TorchScript keys (layers.conv.weight, ...); "
                     f"found e.g. {sorted(sd)[:3]}")


def convert_state_dict(sd: dict[str, np.ndarray], what: str = "weights") -> tuple[dict[str, np.ndarray], str]:
    """torch-named arrays -> (flat Flax params ``{"Mixed_5b/branch1x1/kernel": ...}``, source)."""
    fmt = detect_format(sd)
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}
    for flax_unit, ts_unit in units().items():
        if fmt == "pytorch_fid":
            t = flax_unit.replace("/", ".")
            out[f"{flax_unit}/kernel"] = _conv(_take(sd, f"{t}.conv.weight", used, what))
            out[f"{flax_unit}/scale"] = _take(sd, f"{t}.bn.weight", used, what)
            out[f"{flax_unit}/bias"] = _take(sd, f"{t}.bn.bias", used, what)
            out[f"{flax_unit}/mean"] = _take(sd, f"{t}.bn.running_mean", used, what)
            out[f"{flax_unit}/var"] = _take(sd, f"{t}.bn.running_var", used, what)
            used.add(f"{t}.bn.num_batches_tracked")
        else:
            out[f"{flax_unit}/kernel"] = _conv(_take(sd, f"{ts_unit}.weight", used, what))
            out[f"{flax_unit}/bias"] = _take(sd, f"{ts_unit}.beta", used, what)
            out[f"{flax_unit}/scale"] = np.ones_like(out[f"{flax_unit}/bias"])  # the TF graph has no BN scale
            out[f"{flax_unit}/mean"] = _take(sd, f"{ts_unit}.mean", used, what)
            out[f"{flax_unit}/var"] = _take(sd, f"{ts_unit}.var", used, what)
    fc = "fc" if fmt == "pytorch_fid" else "output"
    out["fc/kernel"] = np.ascontiguousarray(_take(sd, f"{fc}.weight", used, what).T)
    out["fc/bias"] = _take(sd, f"{fc}.bias", used, what)
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise ValueError(f"{what}: unexpected parameters {unexpected[:5]} (not the FID Inception-v3?)")
    for k, s in inception.param_shapes().items():
        if out[k].shape != s:
            raise ValueError(f"{what}: {k} converts to shape {out[k].shape}, expected {s}")
    return out, fmt


def convert_file(src: str | Path, dst: str | Path, *, use_torch: bool = False) -> str:
    """Reads ``src`` and writes the ``.npz``; returns the detected source format."""
    sd = torch_io.read_state_dict(src, use_torch=use_torch)
    flat, fmt = convert_state_dict(sd, what=str(src))
    inception.save_npz(dst, flat, fmt)
    return fmt


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m psm_jax.evaluators.convert_inception",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("src", help="pt_inception-2015-12-05-*.pth or inception-2015-12-05.pt")
    parser.add_argument("dst", help="output .npz")
    parser.add_argument("--use_torch", action="store_true", help="read with torch instead of the built-in reader")
    args = parser.parse_args(argv)
    if not args.dst.endswith(".npz"):
        cli.fail(f"{args.dst}: output must be a .npz file")
    try:
        fmt = convert_file(args.src, args.dst, use_torch=args.use_torch)
    except cli.INPUT_ERRORS as e:
        cli.fail(str(e) if str(args.src) in str(e) else f"{args.src}: {e}")
    print(f"wrote {args.dst} ({fmt})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
