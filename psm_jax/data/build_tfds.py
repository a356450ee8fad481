"""Turns an image folder into an ArrayRecord TFDS dataset for pod training (paper Sec. 4.1 data).

    python -m psm_jax.data.build_tfds --images DIR --out DATA_DIR --name NAME \
        [--eval_images DIR2 --eval_split validation] [--encoding auto|png|jpeg]

writes ``DATA_DIR/NAME/1.0.0/NAME-{train,validation}.array_record-*`` plus ``dataset_info.json``
and ``features.json``; read it back with the config fields ``source="tfds"``,
``tfds_name=NAME``, ``tfds_data_dir=DATA_DIR`` (``tfds.data_source``, no TensorFlow).

Records are ``{"image": encoded bytes, "filename": relative path}``. The images are validated
with the same decoder the pipeline uses (EXIF orientation, RGB); unreadable files are skipped
and counted. ``--encoding auto`` keeps the original bytes of JPEG/PNG files that already decode
to RGB with no EXIF rotation (no generation loss, no growth) and re-encodes everything else as
PNG; ``png``/``jpeg`` re-encode every image.

The builder class is created at run time with ``skip_registration=True`` (the dataset name
comes from the command line) and builds its ``DatasetInfo`` directly instead of through
``dataset_info_from_configs``, which needs a TFDS package directory (STACK_NOTES f).
"""
from __future__ import annotations

import argparse
import io
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

from PIL import Image

from psm_jax import cli
from psm_jax.data import sources, transforms

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ENCODINGS = ("auto", "png", "jpeg")


def encode_record(path: Path, encoding: str) -> bytes | None:
    """The bytes to store for one file, or ``None`` if the file is unreadable."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        log.warning("skipping unreadable file %s: %s", path, e)
        return None
    rgb = transforms.decode_image(raw, str(path))
    if rgb is None:
        return None
    if encoding == "auto":
        with Image.open(io.BytesIO(raw)) as img:
            fmt, mode, orientation = img.format, img.mode, img.getexif().get(0x0112, 1)
        if fmt in ("JPEG", "PNG") and mode == "RGB" and orientation == 1:
            return raw
    fmt = "JPEG" if encoding == "jpeg" else "PNG"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_builder_class(name: str, splits: dict[str, Path], encoding: str):
    """A ``GeneratorBasedBuilder`` subclass named ``name`` that reads ``splits`` (split -> folder)."""
    import tensorflow_datasets as tfds  # deferred: a 0.4 s import; bad flags are reported before it

    stats: dict[str, int] = {"skipped": 0, "written": 0}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images from {', '.join(f'{s}={d}' for s, d in splits.items())} (psm_jax.data.build_tfds).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(None, None, 3), encoding_format=None if encoding == "auto" else encoding),
                "filename": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local
        return {split: _generate(folder) for split, folder in splits.items()}

    def _generate(folder: Path) -> Iterator[tuple[str, dict]]:
        for path in sources.list_images(folder):
            rel = path.relative_to(folder).as_posix()
            data = encode_record(path, encoding)
            if data is None:
                stats["skipped"] += 1
                continue
            stats["written"] += 1
            yield rel, {"image": data, "filename": rel}

    cls = type(name, (tfds.core.GeneratorBasedBuilder,), {
        "name": name,
        "VERSION": tfds.core.Version("1.0.0"),
        "RELEASE_NOTES": {"1.0.0": "Built from a local image folder."},
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": lambda self: None,  # abstract in the base; splits use _generate
        "__module__": __name__,
        # TFDS looks for a checksums file next to the builder's code; for a class made at run
        # time inside a package it resolves the package's resource path, which needs the
        # `importlib_resources` backport (not installed). There is nothing to checksum.
        "code_path": None,
    }, skip_registration=True)
    cls.stats = stats
    return cls


def build(images: str | Path, out: str | Path, name: str, *, eval_images: str | Path | None = None,
          eval_split: str = "validation", encoding: str = "auto") -> dict[str, int]:
    """Builds the dataset; returns ``{"written": n, "skipped": k}``. Raises ``ValueError`` on bad input."""
    if not _NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: expected snake_case (lowercase letters, digits, _; starting with a letter)")
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    splits = {"train": Path(images)}
    if eval_images:
        if eval_split == "train":
            raise ValueError("--eval_split must differ from 'train'")
        splits[eval_split] = Path(eval_images)
    for split, folder in splits.items():
        files = sources.list_images(folder)  # raises SourceError if the folder is missing
        if not files:
            raise sources.SourceError(f"image folder {str(folder)!r} ({split} split) holds no images")
        # Stops at the first readable file; a folder of only corrupt files fails here, before tfds
        # prints its progress bars and a warning per file.
        if not any(transforms.try_decode_image(f.read_bytes())[0] is not None for f in files):
            raise ValueError(f"image folder {str(folder)!r} ({split} split): no image could be decoded (every "
                             "file is corrupt or not an image)")
    out = cli.check_output(out, "--out", folder=True)
    if (out / name).exists() and any((out / name).iterdir()):
        raise ValueError(f"--out {str(out)!r} already holds a dataset {name!r}; remove {str(out / name)!r} first")

    import tensorflow_datasets as tfds  # deferred: see make_builder_class

    builder = make_builder_class(name, splits, encoding)(data_dir=str(out), file_format="array_record")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    except AssertionError as e:   # tfds: "No examples were yielded" when every file is corrupt
        shutil.rmtree(out / name, ignore_errors=True)   # leave no half-written dataset behind
        if "No examples were yielded" in str(e):
            raise ValueError(f"image folder(s) {', '.join(repr(str(f)) for f in splits.values())}: no image "
                             f"could be decoded (every file is corrupt or not an image)") from None
        raise
    stats = dict(builder.stats)
    if stats["skipped"]:
        log.warning("build_tfds: skipped %d unreadable file(s)", stats["skipped"])
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m psm_jax.data.build_tfds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of training images (recursive)")
    parser.add_argument("--out", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--name", required=True, help="dataset name (snake_case)")
    parser.add_argument("--eval_images", default=None, help="optional folder for an evaluation split")
    parser.add_argument("--eval_split", default="validation", help="name of that split (default: validation)")
    parser.add_argument("--encoding", default="auto", choices=ENCODINGS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = build(args.images, args.out, args.name, eval_images=args.eval_images,
                      eval_split=args.eval_split, encoding=args.encoding)
    except ValueError as e:  # SourceError is a ValueError
        return cli.error(f"python -m psm_jax.data.build_tfds: {e}")
    print(f"build_tfds: wrote {stats['written']} images to {args.out}/{args.name} "
          f"(skipped {stats['skipped']} unreadable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
