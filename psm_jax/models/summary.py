"""Parameter count per submodule and FLOPs per forward of the PSM generator (Supp. A, Table C.2).

Usage:
  python -m psm_jax.models.summary --variant paper512
  python -m psm_jax.models.summary --config configs/psm.py:places512 [--batch_size 8] [--json]
  python -m psm_jax.models.summary --config configs/psm.py:places512 --mesh data=4,fsdp=2

``--mesh`` adds the per-device memory and FLOPs of the training steps on that pod layout, at the
config's global batch (``psm_jax.scaling``, the same line as ``bench/scaling.py``): the G + D and
R1 steps are compiled for simulated CPU devices (minutes at 512), never run.

Nothing is compiled or allocated: shapes come from ``jax.eval_shape`` and the FLOPs from XLA's
cost analysis of the lowered forward (``Lowered.cost_analysis()``), so it runs in seconds on CPU.
XLA counts 2 FLOPs per multiply-add and counts the up-2 modulated convs on the zero-inserted
input (``lhs_dilation``) densely, so the decoder's up-sampling convs are counted about 4x their
useful multiply-adds.

**Parameter count of the paper 512 config: 77.44M (paper: 74M, +4.7%).** Breakdown
(``--variant paper512``): encoder stem + 5 residual blocks 14.82M, early conv blocks at H/16,
H/32 (encoder and decoder) 18.88M, 4 attention blocks 8.50M, global style ToStyle 7.60M,
mapping network 2.10M, StyleGAN2 decoder 25.54M. The paper gives no per-module widths, so the gap
comes from choices it leaves open, each documented in generator.py/attention.py. The early
convolutional block is read as a residual block of two 3x3 convs ("one residual block of two 3x3
convs ... unless otherwise stated"); one conv per block would give 68.0M. The attention MLP ratio is
2; a ratio of 4 would add 4.2M. ToStyle's width (1024) is MAT's. Both extremes (68M-82M) stay
within 11% of 74M, and we keep the most literal reading of Supp. A rather than tuning widths to hit
the number. The mapping network's ``w_avg`` and the ``noise_const`` buffers are not parameters.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psm_jax import cli
from psm_jax.config_lib import load_config
from psm_jax.models.generator import Generator, model_config


def _count(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def abstract_variables(generator: Generator, batch: int = 1) -> Any:
    """Variable shapes of ``generator`` (no allocation)."""
    r = generator.resolution
    x, m = jnp.zeros((batch, r, r, 3)), jnp.zeros((batch, r, r, 1))

    def init(key):
        return generator.init({"params": key, "latent": key, "noise": key}, x, m, m, m, 0.0)
    return jax.eval_shape(init, jax.random.key(0))


def forward_flops(generator: Generator, variables: Any, batch: int = 1) -> float:
    """FLOPs of one forward pass at the training resolution from XLA's cost analysis."""
    r = generator.resolution
    x = jax.ShapeDtypeStruct((batch, r, r, 3), jnp.float32)
    m = jax.ShapeDtypeStruct((batch, r, r, 1), jnp.float32)

    def fwd(variables, x, m, key):
        return generator.apply(variables, x, m, m, m, jnp.zeros((batch,)),
                               rngs={"latent": key, "noise": key})
    cost = jax.jit(fwd).lower(variables, x, m, jax.random.key(0)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def summarize(model_cfg: Any, batch: int = 1) -> dict[str, Any]:
    generator = Generator(**model_cfg)
    variables = abstract_variables(generator, batch)
    params = variables["params"]
    per_module = {name: _count(sub) for name, sub in params.items()}
    return {
        "resolution": generator.resolution,
        "batch": batch,
        "params_total": _count(params),
        "params_per_module": per_module,
        "buffers_total": _count({k: v for k, v in variables.items() if k != "params"}),
        "flops_forward": forward_flops(generator, variables, batch),
    }


def _load_config(args: argparse.Namespace) -> Any:
    """The whole training config (``--config``) or the generator config of ``--variant``."""
    if args.config:
        return load_config(args.config)
    return model_config(args.variant)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m psm_jax.models.summary", description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", help="config file[:arg], e.g. configs/psm.py:places512")
    src.add_argument("--variant", choices=["paper512", "paper256", "tiny"], default="paper512",
                     help="generator variant (psm_jax.models.generator.model_config)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch size for the FLOP count")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--mesh", help="also compile the training steps for this pod layout, e.g. data=4,fsdp=2 "
                                       "(needs --config; the global batch is the config's)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        return cli.error(f"python -m psm_jax.models.summary: --batch_size must be >= 1, got {args.batch_size}")
    mesh_shape = None
    if args.mesh is not None:
        # Deferred: the mesh analysis builds the whole training program (train.py, the data
        # pipeline, Orbax); the parameter summary alone does not load them.
        from psm_jax import scaling
        if not args.config:
            return cli.error("python -m psm_jax.models.summary: --mesh needs --config (the training "
                             "config whose steps are compiled), e.g. --config configs/psm.py:places512")
        try:
            mesh_shape = scaling.parse_mesh(args.mesh)
            # Before JAX's first computation: the simulated devices are fixed once JAX starts.
            scaling.use_cpu_devices(mesh_shape[0] * mesh_shape[1])
        except ValueError as e:
            return cli.error(f"python -m psm_jax.models.summary: --mesh: {e}")
    try:
        config = _load_config(args)
    except (OSError, ValueError, AttributeError, KeyError, ImportError, SyntaxError) as e:
        where = args.config or args.variant
        return cli.error(f"python -m psm_jax.models.summary: cannot load model config from {where!r}: {e}")
    model_cfg = config.model if args.config else config
    if mesh_shape is not None:
        devices = mesh_shape[0] * mesh_shape[1]
        if config.batch_size % devices:
            return cli.error(f"python -m psm_jax.models.summary: --mesh {args.mesh}: {devices} devices do not "
                             f"split the config's global batch_size={config.batch_size}")
    try:
        s = summarize(model_cfg, args.batch_size)
    except (TypeError, ValueError) as e:
        return cli.error(f"python -m psm_jax.models.summary: invalid model config: {e}")
    if mesh_shape is not None:
        row = scaling.analyze(config, scaling.make_mesh(*mesh_shape))
        s["per_device"] = {**row, "note": scaling.CPU_NOTE}
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"PSM generator @ {s['resolution']}x{s['resolution']}")
    width = max(len(k) for k in s["params_per_module"])
    for name, n in s["params_per_module"].items():
        print(f"  {name:<{width}}  {n:>12,d}  ({n / 1e6:7.3f} M)")
    print(f"  {'total':<{width}}  {s['params_total']:>12,d}  ({s['params_total'] / 1e6:7.3f} M)")
    print(f"  buffers (not trained): {s['buffers_total']:,d}")
    print(f"FLOPs per forward (batch {s['batch']}, XLA cost analysis): {s['flops_forward'] / 1e9:.2f} GFLOP")
    if mesh_shape is not None:
        print(scaling.memory_line(s["per_device"]))
        print(f"  ({scaling.CPU_NOTE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
