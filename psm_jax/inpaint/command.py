"""``python -m psm_jax.inpaint``: inpaint image files or folders of any size with a trained PSM (Sec. 3.1.2).

    python -m psm_jax.inpaint --workdir runs/places512 --images photos/ --masks masks/ --out results/ \\
        [--iters 4] [--seed 0] [--num_samples 1] [--mask_is_hole] [--save_steps] \\
        [--strategy pad|resize|crop] [--batch_size 4]

Every input is validated (each image decoded, each mask read and paired) before the weights are loaded or
anything is written; a bad one is one ``error:`` line naming it, exit code 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from psm_jax import checkpoint, cli
from psm_jax.data.image_files import IMAGE_EXTENSIONS
from psm_jax.inpaint.api import Inpainter
from psm_jax.inpaint.files import InputError, load_image, load_mask_for, pair_images_and_masks
from psm_jax.inpaint.sizing import STRATEGIES, hole_bbox, plan, work_shape
from psm_jax.visualize import save_grid, spread_strip

PROG = "python -m psm_jax.inpaint"


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir (or a checkpoints/<step> folder)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--images", "--image", required=True, help="an image file or a folder of images")
    p.add_argument("--masks", "--mask", required=True,
                   help="a mask file (serves every image) or a folder of masks named like the images")
    p.add_argument("--out", required=True, help="output folder, or a file name for a single image")
    p.add_argument("--iters", type=int, default=None, help="spread iterations T (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_samples", type=int, default=1, help="results per image (different noise)")
    p.add_argument("--mask_is_hole", action="store_true", help="masks are white (255) = hole")
    p.add_argument("--save_steps", action="store_true",
                   help="also write <name>_steps.png: input, mu_t, sigma_t, m_t per iteration, output")
    p.add_argument("--strategy", choices=STRATEGIES, default="pad", help="how any image size is handled")
    p.add_argument("--batch_size", type=int, default=4, help="images per batch (same padded size)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:   # a bad flag (one line, see cli.ArgumentParser) or --help
        return int(e.code or 0)
    try:
        return _run(args)
    except InputError as e:
        return cli.error(str(e))
    except checkpoint.CheckpointReadError as e:
        # Orbax's reader threads may still complain at interpreter exit: the error stays the last line.
        return cli.error(f"--workdir {e}", last_words=True)


def _out_target(images_arg: Path, out_arg: Path) -> bool:
    """Whether ``--out`` names one output file (a single input image and an image suffix); checks that it (or
    the folder) can be written, before anything is computed."""
    single = images_arg.is_file() and out_arg.suffix.lower() in IMAGE_EXTENSIONS and not out_arg.is_dir()
    try:
        cli.check_output(out_arg, "--out", folder=not single)
    except ValueError as e:
        raise InputError(str(e)) from None
    return single


def _strip_arrays(t: dict, max_side: int = 256) -> dict:
    """Subsamples a work-frame trajectory so a figure cell is at most ``max_side`` pixels (big images)."""
    h, w = t["image"].shape[:2]
    s = max(1, math.ceil(max(h, w) / max_side))
    if s == 1:
        return t
    sub = lambda a: a[..., ::s, ::s, :]  # noqa: E731
    return {"image": sub(t["image"]), "mask": sub(t["mask"]), "output": sub(t["output"]),
            "trajectory": {k: sub(v) for k, v in t["trajectory"].items()}}


def _run(args: argparse.Namespace) -> int:
    for flag, v in (("--iters", args.iters), ("--num_samples", args.num_samples), ("--batch_size", args.batch_size)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    try:   # cheap existence check first; the weights are loaded after the inputs are validated
        checkpoint.resolve_checkpoint(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--workdir {e}") from None

    images_arg, out_arg = Path(args.images), Path(args.out)
    pairs = pair_images_and_masks(images_arg, args.masks)
    single_file_out = _out_target(images_arg, out_arg)
    if single_file_out and args.num_samples > 1:
        raise InputError(f"--out {out_arg}: --num_samples > 1 writes several files; give a folder")

    # Validate everything (decode every image, read every mask) before loading the model or writing anything.
    checked = []
    for img_path, mask_path in pairs:
        loaded = load_image(img_path)
        known, binary = load_mask_for(mask_path, loaded.rgb.shape[:2], args.mask_is_hole)
        if known.all():
            raise InputError(f"{mask_path}: mask has no hole (nothing to inpaint)")
        if not known.any():
            raise InputError(f"{mask_path}: mask is all hole (no known pixel to condition on)")
        if not binary:
            print(f"warning: {mask_path}: mask is not binary; thresholded at 50%", file=sys.stderr)
        checked.append((img_path, mask_path, float(1.0 - known.mean()), known.shape, hole_bbox(known)))
    try:
        inp = Inpainter.from_workdir(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, checkpoint.CheckpointReadError):
            raise
        raise InputError(f"--workdir {e}") from None

    def out_path(img_path: Path, suffix: str = "") -> Path:
        if single_file_out:
            return out_arg if not suffix else out_arg.with_name(out_arg.stem + suffix + ".png")
        return out_arg / f"{img_path.stem}{suffix}.png"

    (out_arg.parent if single_file_out else out_arg).mkdir(parents=True, exist_ok=True)
    # Batches hold images of one padded size; each size's batch size is fixed (a short last batch is padded),
    # so each distinct size compiles once. Images are decoded again per batch: a folder is never held in memory.
    groups: dict[tuple[int, int], list] = {}
    for item in checked:
        groups.setdefault(work_shape(item[3], item[4], args.strategy, inp.resolution), []).append(item)
    done = 0
    bar = tqdm(total=len(checked), desc="inpaint", file=sys.stderr, unit="img", disable=len(checked) <= 1)
    for items in groups.values():
        n = min(len(items), args.batch_size)
        for c0 in range(0, len(items), n):
            block = items[c0:c0 + n]
            loaded, knowns, jobs = [], [], []
            for img_path, mask_path, ratio, (H, W), _ in block:
                li = load_image(img_path)
                known, _ = load_mask_for(mask_path, (H, W), args.mask_is_hole)
                tqdm.write(f"{img_path.name}: {W}x{H}, hole ratio {ratio:.1%}", file=sys.stderr)
                loaded.append(li)
                knowns.append(known)
                jobs.append(plan(li.rgb, known, args.strategy, inp.resolution))
            results, trajs = inp.run_jobs(jobs, iters=args.iters, seed=args.seed, num_samples=args.num_samples,
                                          return_trajectory=args.save_steps, batch_size=n, pad_batches=True)
            for li, known, res, tr in zip(loaded, knowns, results, trajs):
                for s, r in enumerate(res):
                    suffix = f"_s{s}" if args.num_samples > 1 else ""
                    li.to_pil(li.compose(r, known)).save(out_path(li.path, suffix))
                    if args.save_steps:
                        t = _strip_arrays(tr[s])
                        save_grid(spread_strip(t["image"], t["mask"], t["trajectory"], t["output"],
                                               show_masks=True), out_path(li.path, suffix + "_steps"))
                done += 1
            bar.update(len(block))
    bar.close()
    where = out_arg if single_file_out else f"{out_arg}/"
    print(f"wrote {done} image(s) to {where} (T = {args.iters or inp.default_iters}, strategy {args.strategy})",
          file=sys.stderr)
    return 0
