"""Build the LPIPS (AlexNet, v0.1) ``.npz`` from the two PyTorch files the lpips package uses.

    python -m psm_jax.evaluators.convert_lpips --backbone alexnet-owt-7be5be79.pth --linear alex.pth OUT.npz

* ``--backbone``: torchvision's AlexNet ImageNet state dict (``features.{0,3,6,8,10}.{weight,bias}``;
  ``classifier.*`` is ignored).
* ``--linear``: ``lpips/weights/v0.1/alex.pth`` (``lin{0..4}.model.1.weight``, shape [1, C, 1, 1]).
  Those files were saved from a CUDA device; the torch-free reader ignores the device tag, and
  ``--use_torch`` loads with ``map_location="cpu"``.
"""
from __future__ import annotations

import sys

import numpy as np

from psm_jax import cli
from psm_jax.evaluators import lpips, torch_io

LIN_CHANNELS = tuple(c for _, c, *_ in lpips.ALEX_CONVS)


def convert_state_dicts(backbone: dict, linear: dict, what=("backbone", "linear")) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    cin = 3
    for i, (idx, cout, k, *_rest) in enumerate(lpips.ALEX_CONVS):
        for leaf in ("weight", "bias"):
            if f"features.{idx}.{leaf}" not in backbone:
                raise ValueError(f"{what[0]}: missing parameter 'features.{idx}.{leaf}' (not torchvision's AlexNet?)")
        w = np.asarray(backbone[f"features.{idx}.weight"], np.float32)
        if w.shape != (cout, cin, k, k):
            raise ValueError(f"{what[0]}: features.{idx}.weight has shape {w.shape}, expected {(cout, cin, k, k)}")
        out[f"conv{i}/kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        out[f"conv{i}/bias"] = np.asarray(backbone[f"features.{idx}.bias"], np.float32).reshape(cout)
        cin = cout
    unexpected = sorted(k for k in backbone if not k.startswith("classifier.")
                        and k not in {f"features.{c[0]}.{l}" for c in lpips.ALEX_CONVS for l in ("weight", "bias")})
    if unexpected:
        raise ValueError(f"{what[0]}: unexpected parameters {unexpected[:5]}")
    for k, c in enumerate(LIN_CHANNELS):
        key = f"lin{k}.model.1.weight"
        if key not in linear:
            raise ValueError(f"{what[1]}: missing parameter {key!r} (not the lpips v0.1 alex.pth?)")
        w = np.asarray(linear[key], np.float32)
        if w.shape != (1, c, 1, 1):
            raise ValueError(f"{what[1]}: {key} has shape {w.shape}, expected {(1, c, 1, 1)}")
        out[f"lin{k}"] = w.reshape(c)
    extra = sorted(set(linear) - {f"lin{k}.model.1.weight" for k in range(5)})
    if extra:
        raise ValueError(f"{what[1]}: unexpected parameters {extra[:5]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m psm_jax.evaluators.convert_lpips", description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", required=True, help="torchvision AlexNet state dict (.pth)")
    parser.add_argument("--linear", required=True, help="lpips weights/v0.1/alex.pth")
    parser.add_argument("out", help="output .npz")
    parser.add_argument("--use_torch", action="store_true", help="read with torch instead of the built-in reader")
    args = parser.parse_args(argv)
    if not args.out.endswith(".npz"):
        cli.fail(f"{args.out}: output must be a .npz file")
    state_dicts = []
    for flag, path in (("--backbone", args.backbone), ("--linear", args.linear)):
        try:
            state_dicts.append(torch_io.read_state_dict(path, use_torch=args.use_torch))
        except cli.INPUT_ERRORS as e:
            cli.fail(f"{flag} {e}" if str(path) in str(e) else f"{flag} {path}: {e}")
    try:
        flat = convert_state_dicts(*state_dicts, what=(args.backbone, args.linear))
    except cli.INPUT_ERRORS as e:
        cli.fail(str(e))
    lpips.save_npz(args.out, flat)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
