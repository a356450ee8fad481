"""Times the modulated-conv implementations (psm_jax/models/layers.py `ModulatedConv2d.impl`).

Run: .venv/bin/python bench/modconv.py            # quick sizes, well under a minute on a 2-core CPU
     .venv/bin/python bench/modconv.py --full     # B=4 64x64 256->256 and B=1/8 32x32 512->512 (minutes on CPU:
                                                  # XLA CPU expands grouped convs, see layers.py)
Prints one JSON line per (config, impl): median forward and forward+backward wall time in ms (after compile).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from psm_jax.models.layers import MODCONV_IMPLS, ModulatedConv2d  # noqa: E402

FULL_CONFIGS = [  # batch, size, in, out, k
    (4, 64, 256, 256, 3),
    (1, 32, 512, 512, 3),
    (8, 32, 512, 512, 3),
]
QUICK_CONFIGS = [
    (4, 32, 128, 128, 3),
    (1, 16, 256, 256, 3),
    (8, 16, 256, 256, 3),
]


def _median_ms(fn, *args, repeats: int) -> float:
    return common.time_fn(fn, *args, repeats=repeats)["median_s"] * 1e3  # the warm-up call compiles


def main(argv: list[str]) -> None:
    parser = common.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the realistic (slow on CPU) sizes")
    parser.add_argument("--impls", default=",".join(MODCONV_IMPLS))
    parser.add_argument("--up", type=int, default=1, choices=(1, 2))
    args = parser.parse_args(argv)
    bad = [i for i in args.impls.split(",") if i not in MODCONV_IMPLS]
    if bad or args.repeats < 1:
        common.fail("bench/modconv.py", f"--impls takes a comma-separated subset of {','.join(MODCONV_IMPLS)} "
                                        f"(got {args.impls!r}) and --repeats >= 1")
    for batch, size, fan_in, fan_out, k in FULL_CONFIGS if args.full else QUICK_CONFIGS:
        kx, ks = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (batch, size, size, fan_in))
        style = jax.random.normal(ks, (batch, 512))
        for impl in args.impls.split(","):
            module = ModulatedConv2d(fan_out, k, up=args.up, impl=impl)
            variables = jax.jit(module.init)(jax.random.key(1), x, style)
            fwd = jax.jit(module.apply)
            loss = lambda v, x, s: jnp.sum(module.apply(v, x, s))  # noqa: E731
            fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
            common.emit({
                "batch": batch, "size": size, "in": fan_in, "out": fan_out, "k": k, "up": args.up, "impl": impl,
                "fwd_ms": round(_median_ms(fwd, variables, x, style, repeats=args.repeats), 2),
                "fwd_bwd_ms": round(_median_ms(fwd_bwd, variables, x, style, repeats=args.repeats), 2),
                "device": common.device_name(), "load1": common.load1(),
            })


if __name__ == "__main__":
    main(sys.argv[1:])
