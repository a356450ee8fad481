"""Evaluate a trained PSM as the paper does (Sec. 4.1, Tables 2-3): FID, P-IDS, U-IDS, LPIPS, PSNR,
SSIM, L1 of composited outputs, plus the calibration of sigma (issue 16).

    python -m psm_jax.evaluate --workdir runs/psm --images PLACES_VAL --masks large --iters 1,2,4 \\
        --inception inception.npz [--lpips lpips.npz] [--protocol places512_large] --out results.json

* ``--images``: a folder of images (``image_files.IMAGE_EXTENSIONS``, recursive), sorted by path.
* ``--masks``: a folder of mask images (255 = known; ``--mask_is_hole`` for 255 = hole) paired with
  the images **by name** (``mask_io.pair_masks``: ``x.jpg`` <-> ``x.png`` or ``x_mask.png``, the
  rule ``inpaint`` uses; anything unpaired is refused), or ``large`` / ``small``: MAT's free-form
  masks, seeded from (``--seed``, image index) as the in-training evaluator seeds them.
* Images are centre-cropped (reflect-padded if small) to the model resolution.
* ``--protocol`` pins the image count, mask kind and resolution of a Table 3 column (see
  ``evaluators/report.py``); with fewer images than it expects, it warns and reports the count.
* Real-image Inception features are cached in ``--cache_dir``, keyed by the hash of the image
  file list (names and sizes), the resolution/crop, the count and the Inception weights + resize.
* Writes ``--out`` (JSON: metrics per T and a record of how they were computed), a Markdown file
  beside it (``.md``), one reliability plot per T (``_reliability_T<T>.png``), and prints the tables.

Inception weights: ``python -m psm_jax.evaluators.convert_inception``; LPIPS: ``convert_lpips``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from psm_jax import checkpoint, cli
from psm_jax.data import mask_io, transforms
from psm_jax.data.image_files import list_images
from psm_jax.data.pipeline import seeded_eval_masks
from psm_jax.evaluators import inpainting, report
from psm_jax.evaluators.inception import InceptionFeatures
from psm_jax.evaluators.lpips import LPIPS
from psm_jax.inpaint import make_inpaint_fn
from psm_jax.npz_io import NpzError, load_npz
from psm_jax.sharding import make_mesh


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m psm_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir with checkpoints")
    p.add_argument("--images", required=True, help="folder of ground-truth images")
    p.add_argument("--masks", required=True,
                   help="folder of masks named like the images (255 = known), or large / small (seeded)")
    p.add_argument("--iters", default=None, help="spread iterations T, comma-separated (default: config)")
    p.add_argument("--num_images", type=int, default=None, help="first N images by name (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception", required=True, help="Inception .npz (convert_inception)")
    p.add_argument("--resize", choices=("nvidia", "pytorch_fid"), default="nvidia",
                   help="Inception input resize: nvidia = MAT/PSM's TorchScript detector (default)")
    p.add_argument("--lpips", default=None, help="LPIPS .npz (convert_lpips); omitted: no LPIPS")
    p.add_argument("--protocol", choices=sorted(report.PROTOCOLS), default=None)
    p.add_argument("--out", required=True, help="results .json")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--cache_dir", default=None, help="real-statistics cache (default: ~/.cache/psm_jax/fid)")
    p.add_argument("--fid_method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="sqrtm: MAT's scipy.linalg.sqrtm (default); eigh: same value, faster")
    p.add_argument("--mask_is_hole", action="store_true", help="masks are white (255) = hole")
    p.add_argument("--no_progress", action="store_true")
    return p


def pair_masks(images: list[Path], mask_dir: str) -> list[Path]:
    """The mask of each image (``mask_io.pair_masks``, the rule ``inpaint`` uses), in image order."""
    try:
        by_image = dict(mask_io.pair_masks(images, mask_dir))
    except mask_io.MaskPairingError as e:
        raise ValueError(f"--masks {e}") from None
    return [by_image[p] for p in images]


def file_list_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def make_batches(images: list[Path], masks: list[Path] | str, resolution: int, batch_size: int, seed: int,
                 invert: bool):
    """Yields ``{"image": [-1,1], "mask": BHW1}`` batches in image order (decoded on 4 threads)."""
    seeded = seeded_eval_masks(seed, resolution, masks) if isinstance(masks, str) else None

    def load(i: int):
        decoded, why = transforms.try_decode_image(images[i].read_bytes())
        if decoded is None:
            raise ValueError(f"{images[i]}: cannot read as an image ({why})")
        img = transforms.to_model_range(transforms.center_crop(decoded, resolution))
        m = seeded(i) if seeded else mask_io.load_mask(masks[i], invert=invert)
        if m.shape != img.shape[:2]:
            raise ValueError(f"{masks[i]}: mask is {m.shape[1]}x{m.shape[0]}, expected {resolution}x{resolution}")
        return img, m.astype(np.float32)

    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(images), batch_size):
            items = list(pool.map(load, range(start, min(start + batch_size, len(images)))))
            yield {"image": np.stack([a for a, _ in items]), "mask": np.stack([b for _, b in items])[..., None]}


def _finite(x):
    """NaN / inf -> null, so the file is strict JSON."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except checkpoint.CheckpointReadError as e:
        raise SystemExit(cli.error(f"--workdir {e}", last_words=True)) from None
    except cli.INPUT_ERRORS as e:
        cli.fail(str(e))


def _weights(load, flag: str, path: str, **kw):
    """``load(path)``; its one-line error names the flag."""
    try:
        return load(path, **kw)
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag} {e}") from None


def _check_args(args) -> tuple[list[int] | None, report.Protocol | None]:
    if not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: expected a .json path")
    if not Path(args.out).resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: folder does not exist")
    iters = None
    if args.iters is not None:
        try:
            iters = [int(t) for t in args.iters.split(",")]
        except ValueError:
            raise ValueError(f"--iters {args.iters!r}: expected positive integers like 1,2,4") from None
        if not iters or min(iters) < 1 or len(set(iters)) != len(iters):
            raise ValueError(f"--iters {args.iters!r}: expected distinct positive integers like 1,2,4")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size}: expected >= 1")
    if args.num_images is not None and args.num_images < 1:
        raise ValueError(f"--num_images {args.num_images}: expected >= 1")
    protocol = report.PROTOCOLS.get(args.protocol) if args.protocol else None
    if args.masks not in ("large", "small") and not Path(args.masks).is_dir():
        raise FileNotFoundError(f"--masks {args.masks}: expected a folder of mask PNGs, or large / small")
    if protocol:
        if args.masks in ("large", "small") and args.masks != protocol.masks:
            raise ValueError(f"--masks {args.masks}: protocol {protocol.name} uses {protocol.masks} masks")
        if args.num_images is not None and args.num_images != protocol.num_images:
            raise ValueError(f"--num_images {args.num_images}: protocol {protocol.name} pins "
                             f"{protocol.num_images}; drop one of the two flags")
    for flag, path in (("--inception", args.inception), ("--lpips", args.lpips)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: file not found")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a folder; expected a .json file path")
    try:   # cheap existence check; the weights are read after every other input is checked
        checkpoint.resolve_checkpoint(args.workdir)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--workdir {e}") from None
    return iters, protocol


def _run(args) -> int:
    iters, protocol = _check_args(args)
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images}: not a folder")
    all_images = list_images(args.images, "--images")
    images = all_images
    warns: list[str] = []
    wanted = protocol.num_images if protocol else args.num_images
    if wanted is not None and len(images) < wanted:
        warns.append(f"{args.images} holds {len(images)} images, fewer than the {wanted} "
                     f"{'the protocol ' + protocol.name + ' expects' if protocol else 'asked for'}; "
                     f"reporting {len(images)}")
    images = images[:wanted] if wanted else images
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    if Path(args.masks).is_dir() and args.masks not in ("large", "small"):
        # Pair the whole folder listing first so that a stray or missing mask is named.
        masks: list[Path] | str = pair_masks(all_images, args.masks)[:len(images)]
    else:
        masks = args.masks
    inception = _weights(InceptionFeatures.from_npz, "--inception", args.inception, resize=args.resize)
    lpips = _weights(LPIPS.from_npz, "--lpips", args.lpips) if args.lpips else None
    try:
        config, variables = checkpoint.load_run(args.workdir)
    except checkpoint.CheckpointReadError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--workdir {e}") from None
    resolution = int(config.model.resolution)
    if protocol and protocol.resolution != resolution:
        raise ValueError(f"--protocol {protocol.name} is at {protocol.resolution} px but the model in "
                         f"{args.workdir} is {resolution} px")
    iters = iters or [int(config.spread.test_iters)]

    cache_dir = Path(args.cache_dir or Path.home() / ".cache" / "psm_jax" / "fid")
    cache_key = hashlib.sha256(json.dumps({
        "files": file_list_hash(images), "resolution": resolution, "crop": "center_reflect",
        "inception": inception.sha256, "resize": args.resize}).encode()).hexdigest()
    cache_path = cache_dir / f"real_{cache_key[:24]}.npz"
    real = None
    if cache_path.is_file():
        try:
            real = load_npz(cache_path, "cached real-image features")["features"]
        except (NpzError, KeyError):   # a damaged cache entry is recomputed and rewritten
            real = None

    mesh = make_mesh() if jax.device_count() > 1 else None

    results: dict[int, dict[str, float]] = {}
    runs = {}
    cache_hit = real is not None
    t0 = time.time()
    for T in iters:
        fn = make_inpaint_fn(config, num_iters=T, return_trajectory=True)
        batches = make_batches(images, masks, resolution, args.batch_size, args.seed, args.mask_is_hole)
        with tqdm(total=len(images), desc=f"T={T}", unit="img", disable=args.no_progress, file=sys.stderr) as bar:
            run = inpainting.evaluate_batches(fn, variables, batches, key=jax.random.key(args.seed),
                                              inception=inception, lpips=lpips, need_real_features=real is None,
                                              mesh=mesh, progress=bar)
        if real is None:
            real = run.reals()
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp.npz")
            np.savez(tmp, features=real, key=np.asarray(cache_key))
            os.replace(tmp, cache_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            results[T] = run.summary(real, fid_method=args.fid_method)
        runs[T] = run

    out = Path(args.out)
    record = {
        "num_images": len(images), "protocol": args.protocol, "images": str(Path(args.images).resolve()),
        "masks": args.masks if isinstance(masks, str) else f"folder {Path(args.masks).resolve()} (paired by stem)",
        "iterations": iters, "seed": args.seed, "batch_size": args.batch_size, "workdir": str(Path(args.workdir).resolve()),
        "inception": {"path": str(Path(args.inception).resolve()), "sha256": inception.sha256,
                      "source": inception.source, "resize": args.resize},
        "lpips": {"path": str(Path(args.lpips).resolve()), "sha256": lpips.sha256} if lpips else None,
        "fid_method": args.fid_method, "ids": "sklearn LinearSVC(dual=False), real=1 fake=0, U-IDS on training data",
        "real_stats_cache": {"path": str(cache_path), "key": cache_key, "hit": cache_hit},
        "devices": jax.device_count(), "git_sha": report.git_sha(), "config": config.to_dict(),
        "seconds": round(time.time() - t0, 1), "warnings": warns,
    }
    md = report.markdown(results, record)
    payload = {"results": {str(t): r for t, r in results.items()}, "record": record, "markdown": md,
               "reliability": {str(t): {str(i): runs[t].calib.reliability(i) for i in runs[t].calib.iterations()}
                               for t in iters}}
    for t in iters:
        if runs[t].calib.iterations():
            runs[t].calib.reliability_png(out.with_name(f"{out.stem}_reliability_T{t}.png"))
    text = json.dumps(_finite(payload), indent=2, default=str, allow_nan=False)
    out.write_text(text)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
