"""Evaluate a trained PSM as the paper does (Sec. 4.1, Tables 2-3): FID, P-IDS, U-IDS, LPIPS, PSNR,
SSIM, L1 of composited outputs, plus the calibration of sigma (issue 16).

    python -m psm_jax.evaluate --workdir runs/psm --images PLACES_VAL --masks large --iters 1,2,4 \\
        --inception inception.npz [--lpips lpips.npz] [--protocol places512_large] --out results.json
    python -m psm_jax.evaluate --workdir runs/demo --images from_config --masks large --iters 1,2,4 \\
        --calib_samples 0 --out results.json          # the run's own held-out split, no FID / IDS

* ``--images``: a folder of images (``image_files.IMAGE_EXTENSIONS``, recursive), sorted by path,
  or ``from_config``: the eval split of the run's own data source (``config.data``, e.g. the 297
  held-out digits of ``configs/demo.py``), read as the in-training evaluator reads it
  (``pipeline.make_eval_dataset``), with ``--masks large`` / ``small`` seeded from ``--seed``.
* ``--masks``: a folder of mask images (255 = known; ``--mask_is_hole`` for 255 = hole) paired with
  the images **by name** (``mask_io.pair_masks``: ``x.jpg`` <-> ``x.png`` or ``x_mask.png``, the
  rule ``inpaint`` uses; anything unpaired is refused), or ``large`` / ``small``: MAT's free-form
  masks, seeded from (``--seed``, image index) as the in-training evaluator seeds them.
* Images are centre-cropped (reflect-padded if small) to the model resolution.
* ``--protocol`` pins the image count, mask kind and resolution of a Table 3 column (see
  ``evaluators/report.py``); with fewer images than it expects, it warns and reports the count.
* ``--inception`` is optional: without it FID, P-IDS and U-IDS are left out, and the record says so
  (``left_out``). FID means little on tiny images such as the 32 px digits.
* ``--calib_samples``: pixels per batch sampled for the rank statistics of sigma (Spearman, AUSE);
  0 ranks every hole pixel (exact; cheap at 32 px).
* ``--save_images N``: also writes the first N composited outputs of every T, with their masks and
  ground truth, to ``OUT_images.npz`` (uint8; ``launch.collect`` draws figures from it).
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
import ml_collections
import numpy as np
from tqdm import tqdm

from psm_jax import checkpoint, cli
from psm_jax.data import mask_io, transforms
from psm_jax.data.image_files import list_images
from psm_jax.data.pipeline import make_eval_dataset, seeded_eval_masks
from psm_jax.data.sources import make_source
from psm_jax.evaluators import calibration, inpainting, report
from psm_jax.evaluators.inception import InceptionFeatures
from psm_jax.evaluators.lpips import LPIPS
from psm_jax.inpaint import make_inpaint_fn
from psm_jax.npz_io import NpzError, load_npz
from psm_jax.sharding import make_mesh


FROM_CONFIG = "from_config"      # --images: the run's own eval split
SEEDED_MASKS = ("large", "small")


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m psm_jax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir with checkpoints")
    p.add_argument("--images", required=True,
                   help=f"folder of ground-truth images, or {FROM_CONFIG}: the run's own eval split (config.data)")
    p.add_argument("--masks", required=True,
                   help="folder of masks named like the images (255 = known), or large / small (seeded)")
    p.add_argument("--iters", default=None, help="spread iterations T, comma-separated (default: config)")
    p.add_argument("--num_images", type=int, default=None, help="first N images by name (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inception", default=None, help="Inception .npz (convert_inception); omitted: no FID / IDS")
    p.add_argument("--resize", choices=("nvidia", "pytorch_fid"), default="nvidia",
                   help="Inception input resize: nvidia = MAT/PSM's TorchScript detector (default)")
    p.add_argument("--lpips", default=None, help="LPIPS .npz (convert_lpips); omitted: no LPIPS")
    p.add_argument("--protocol", choices=sorted(report.PROTOCOLS), default=None)
    p.add_argument("--out", required=True, help="results .json")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--calib_samples", type=int, default=calibration.SAMPLES_PER_BATCH,
                   help="pixels per batch for the rank statistics of sigma; 0 = every hole pixel (exact)")
    p.add_argument("--save_images", type=int, default=0,
                   help="write the first N composited outputs per T to OUT_images.npz (default 0: none)")
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
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--num_images", args.num_images, 1),
                             ("--calib_samples", args.calib_samples, 0), ("--save_images", args.save_images, 0)):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: expected >= {low}")
    protocol = report.PROTOCOLS.get(args.protocol) if args.protocol else None
    if args.images == FROM_CONFIG:
        if args.masks not in SEEDED_MASKS:
            raise ValueError(f"--masks {args.masks}: with --images {FROM_CONFIG}, expected large or small "
                             "(seeded masks)")
    elif args.masks not in SEEDED_MASKS and not Path(args.masks).is_dir():
        raise FileNotFoundError(f"--masks {args.masks}: expected a folder of mask PNGs, or large / small")
    if protocol:
        if args.masks in SEEDED_MASKS and args.masks != protocol.masks:
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
    if args.images != FROM_CONFIG and not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images}: not a folder (or {FROM_CONFIG})")
    return iters, protocol


def _fewer(what: str, have: int, wanted: int, protocol: report.Protocol | None) -> str:
    asked = f"the protocol {protocol.name} expects" if protocol else "asked for"
    return f"{what} holds {have} images, fewer than the {wanted} {asked}; reporting {have}"


def _folder_inputs(args, wanted: int | None, protocol, warns: list[str]):
    """(batches(resolution), image count, record fields, real-statistics cache identity) for a folder."""
    all_images = list_images(args.images, "--images")
    if wanted is not None and len(all_images) < wanted:
        warns.append(_fewer(args.images, len(all_images), wanted, protocol))
    images = all_images[:wanted] if wanted else all_images
    if args.masks not in SEEDED_MASKS:
        # Pair the whole folder listing first so that a stray or missing mask is named.
        masks: list[Path] | str = pair_masks(all_images, args.masks)[:len(images)]
        masks_text = f"folder {Path(args.masks).resolve()} (paired by stem)"
    else:
        masks, masks_text = args.masks, args.masks

    def batches(resolution: int):
        return make_batches(images, masks, resolution, args.batch_size, args.seed, args.mask_is_hole)
    return batches, len(images), {"images": str(Path(args.images).resolve()), "masks": masks_text}, \
        {"files": file_list_hash(images)}


def _config_inputs(args, config: ml_collections.ConfigDict, wanted: int | None, protocol, warns: list[str]):
    """The same four things for ``--images from_config``: the eval split of ``config.data``."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.eval_mask_kind, data.eval_mask_dir = args.masks, ""
    try:
        n = len(make_source(data, train=False))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--images {FROM_CONFIG}: the run's data source ({data.source}) cannot be read: {e}") from None
    if wanted is not None and n < wanted:
        warns.append(_fewer(f"the {data.source} eval split", n, wanted, protocol))
    n = min(n, wanted) if wanted else n

    def batches(resolution: int):
        del resolution    # the config's own (centre crop to data.resolution)
        for b in make_eval_dataset(data, batch_size=args.batch_size, num_images=n, seed=args.seed):
            yield {"image": np.asarray(b["image"]), "mask": np.asarray(b["mask"])}
    split = ", ".join(f"{k}={data[k]}" for k in ("digits_eval", "path", "tfds_name") if k in data and data[k])
    record = {"images": f"{FROM_CONFIG}: the {data.source} eval split ({split or 'config.data'})",
              "masks": f"{args.masks} (seeded, hole_range {tuple(data.hole_range)})"}
    return batches, n, record, {"data": json.dumps(data.to_dict(), sort_keys=True, default=str), "n": n}


def _save_images(path: Path, runs: dict[int, inpainting.SpreadRun], inputs) -> None:
    """The first kept outputs of every T with their ground truth and masks (uint8) in one .npz."""
    k = min(sum(len(a) for a in r.kept_images) for r in runs.values())
    image, mask = [], []
    for b in inputs:
        image.append(b["image"])
        mask.append(b["mask"])
        if sum(len(a) for a in image) >= k:
            break
    gt = np.clip(np.rint((np.concatenate(image)[:k] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    arrays = {f"T{t}": np.concatenate(r.kept_images)[:k] for t, r in runs.items()}
    np.savez_compressed(path, ground_truth=gt, mask=(np.concatenate(mask)[:k] > 0.5).astype(np.uint8), **arrays)


def _run(args) -> int:
    iters, protocol = _check_args(args)
    warns: list[str] = []
    wanted = protocol.num_images if protocol else args.num_images
    if args.images != FROM_CONFIG:
        batches, num_images, where, identity = _folder_inputs(args, wanted, protocol, warns)
    inception = (_weights(InceptionFeatures.from_npz, "--inception", args.inception, resize=args.resize)
                 if args.inception else None)
    lpips = _weights(LPIPS.from_npz, "--lpips", args.lpips) if args.lpips else None
    try:
        config, variables, step = checkpoint.load_checkpoint(args.workdir)
    except checkpoint.CheckpointReadError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--workdir {e}") from None
    if args.images == FROM_CONFIG:
        batches, num_images, where, identity = _config_inputs(args, config, wanted, protocol, warns)
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    resolution = int(config.model.resolution)
    if protocol and protocol.resolution != resolution:
        raise ValueError(f"--protocol {protocol.name} is at {protocol.resolution} px but the model in "
                         f"{args.workdir} is {resolution} px")
    iters = iters or [int(config.spread.test_iters)]

    cache_dir = Path(args.cache_dir or Path.home() / ".cache" / "psm_jax" / "fid")
    cache_key = cache_path = real = None
    if inception is not None:
        cache_key = hashlib.sha256(json.dumps({
            **identity, "resolution": resolution, "crop": "center_reflect",
            "inception": inception.sha256, "resize": args.resize}).encode()).hexdigest()
        cache_path = cache_dir / f"real_{cache_key[:24]}.npz"
        if cache_path.is_file():
            try:
                real = load_npz(cache_path, "cached real-image features")["features"]
            except (NpzError, KeyError):   # a damaged cache entry is recomputed and rewritten
                real = None

    mesh = make_mesh() if jax.device_count() > 1 else None

    results: dict[int, dict[str, float]] = {}
    runs, seconds = {}, {}
    cache_hit = real is not None
    t0 = time.time()
    for T in iters:
        t_start = time.time()
        fn = make_inpaint_fn(config, num_iters=T, return_trajectory=True)
        with tqdm(total=num_images, desc=f"T={T}", unit="img", disable=args.no_progress, file=sys.stderr) as bar:
            run = inpainting.evaluate_batches(fn, variables, batches(resolution), key=jax.random.key(args.seed),
                                              inception=inception, lpips=lpips, need_real_features=real is None,
                                              mesh=mesh, progress=bar, calib_samples=args.calib_samples or None,
                                              keep_images=args.save_images)
        if inception is not None and real is None:
            real = run.reals()
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp.npz")
            np.savez(tmp, features=real, key=np.asarray(cache_key))
            os.replace(tmp, cache_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            results[T] = run.summary(real, fid_method=args.fid_method)
        runs[T] = run
        seconds[str(T)] = round(time.time() - t_start, 1)

    out = Path(args.out)
    no_inception = "no --inception given"
    left_out = {**({"fid": no_inception, "p_ids": no_inception, "u_ids": no_inception} if inception is None else {}),
                **({"lpips": "no --lpips given"} if lpips is None else {})}
    record = {
        "num_images": num_images, "protocol": args.protocol, **where,
        "iterations": iters, "seed": args.seed, "batch_size": args.batch_size,
        "workdir": str(Path(args.workdir).resolve()), "step": step,
        "inception": {"path": str(Path(args.inception).resolve()), "sha256": inception.sha256,
                      "source": inception.source, "resize": args.resize} if inception else None,
        "lpips": {"path": str(Path(args.lpips).resolve()), "sha256": lpips.sha256} if lpips else None,
        "left_out": left_out,
        "fid_method": args.fid_method if inception else None,
        "ids": "sklearn LinearSVC(dual=False), real=1 fake=0, U-IDS on training data" if inception else None,
        "real_stats_cache": {"path": str(cache_path), "key": cache_key, "hit": cache_hit} if inception else None,
        "calib_samples": args.calib_samples or "all hole pixels",
        "devices": jax.device_count(), "git_sha": report.git_sha(), "config": config.to_dict(),
        "seconds": round(time.time() - t0, 1), "seconds_per_iters": seconds, "warnings": warns,
    }
    md = report.markdown(results, record)
    payload = {"results": {str(t): r for t, r in results.items()}, "record": record, "markdown": md,
               "reliability": {str(t): {str(i): runs[t].calib.reliability(i) for i in runs[t].calib.iterations()}
                               for t in iters}}
    for t in iters:
        if runs[t].calib.iterations():
            runs[t].calib.reliability_png(out.with_name(f"{out.stem}_reliability_T{t}.png"))
    if args.save_images:
        _save_images(out.with_name(f"{out.stem}_images.npz"), runs, batches(resolution))
    text = json.dumps(_finite(payload), indent=2, default=str, allow_nan=False)
    out.write_text(text)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"Evaluated {num_images} images at T = {', '.join(map(str, iters))} in {record['seconds']:.0f} s "
          f"({', '.join(f'T={t}: {s:.0f} s' for t, s in seconds.items())}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
