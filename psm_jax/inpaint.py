"""Inference: inpaint images with a trained PSM (the pixel spread of Sec. 3.1.2 with G_ema).

Library use::

    config, variables = load_run("runs/demo")
    fn = make_inpaint_fn(config, num_iters=4)
    out = fn(variables, image_BHWC, mask_BHW1, jax.random.key(0))   # out["image"], out["trajectory"]

Command line (MAT's mask convention: PNG 255 = known, 0 = hole; pairs by sorted file name)::

    python -m psm_jax.inpaint --workdir runs/demo --images IMG_DIR --masks MASK_DIR --out OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psm_jax.spread import pixel_spread


def _tuples(x: Any) -> Any:
    """JSON turns tuples into lists; module fields want the tuples back."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


def make_inpaint_fn(config: ml_collections.ConfigDict, *, num_iters: int | None = None,
                    noise_mode: str = "random", return_trajectory: bool = True) -> Callable:
    """A jitted ``fn(variables, image, mask, key) -> dict`` running the full spread."""
    from psm_jax.models.generator import Generator
    from psm_jax.train_step import Models, generator_apply_fn

    models = Models(Generator(**config.model), None, None, None)
    T = int(num_iters or config.spread.test_iters)

    @jax.jit
    def fn(variables, image, mask, key):
        return pixel_spread(generator_apply_fn(models, variables, noise_mode=noise_mode),
                            image, mask, key, num_iters=T, schedule=config.spread.schedule,
                            alpha=config.spread.alpha, return_trajectory=return_trajectory,
                            # Configs saved before this field existed ran Eq. 5 as written.
                            resample_committed=config.spread.get("resample_committed", True))
    return fn


def ema_variables(state: dict[str, Any]) -> dict[str, Any]:
    """Generator variables for inference: the EMA weights plus the (untrained) buffers."""
    return {"params": state["g_ema_params"], **state["g_buffers"]}


def load_run(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, G_ema variables) of the latest (or given) checkpoint in a workdir."""
    from psm_jax import checkpoint as ckpt

    mngr = ckpt.make_manager(workdir, async_save=False)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir}: no finished checkpoint")
    meta = mngr.restore(step, args=ckpt.ocp.args.Composite(meta=ckpt.ocp.args.JsonRestore()))["meta"]
    state = ckpt._restore_numpy(mngr, step)
    return config_from_json(meta["config"]), jax.tree.map(jnp.asarray, ema_variables(state))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psm_jax.inpaint", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="training workdir with checkpoints/")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of mask PNGs (255 = known)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, default=None, help="spread iterations (default: config)")
    parser.add_argument("--invert", action="store_true", help="masks use 255 = hole")
    parser.add_argument("--pair-by", choices=("name", "order"), default="name",
                        help="pair masks with images by file name (default) or by sorted order (MAT's sets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from PIL import Image

    from psm_jax.data import mask_io, transforms
    try:
        config, variables = load_run(args.workdir)
        image_paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in
                             (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if not image_paths:
            raise FileNotFoundError(f"{args.images}: no images found")
        pairs = mask_io.pair_masks(image_paths, args.masks, by=args.pair_by)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    R = config.model.resolution
    fn = make_inpaint_fn(config, num_iters=args.iters, return_trajectory=False)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (img_path, mask_path) in enumerate(pairs):
        decoded = transforms.decode_image(img_path.read_bytes(), str(img_path))
        if decoded is None:
            print(f"warning: {img_path}: unreadable image, skipped", file=sys.stderr)
            continue
        img = transforms.to_model_range(transforms.center_crop(decoded, R))
        try:
            mask = mask_io.load_mask(mask_path, invert=args.invert)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if mask.shape != img.shape[:2]:
            print(f"error: {mask_path}: mask is {mask.shape}, expected {img.shape[:2]}", file=sys.stderr)
            return 2
        out = fn(variables, jnp.asarray(img)[None], jnp.asarray(mask)[None, ..., None],
                 jax.random.fold_in(jax.random.key(args.seed), i))
        Image.fromarray(transforms.from_model_range(out["image"][0])).save(out_dir / f"{img_path.stem}.png")
    print(f"wrote {len(pairs)} images to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
