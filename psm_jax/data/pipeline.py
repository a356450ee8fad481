"""The grain input pipeline: training and evaluation batches (paper Sec. 4.1; MAT masks).

Training (``make_train_iterator``), per JAX process::

    source -> tag record index -> shuffle(seed) -> repeat (reshuffled per epoch) -> decode
    -> random map (flip, crop, mask; digits: shift, mask) -> this process's rows of each global batch
    -> to_iter_dataset -> [mp_prefetch] -> drop + count corrupt records -> batch -> thread prefetch

Design points:

* **Worker-count independence.** Everything up to the random map is a one-to-one ``MapDataset``
  op, and its per-record RNG comes from (seed, position), so element ``k`` is the same whatever
  the number of workers. ``mp_prefetch`` hands worker ``w`` the positions ``w::W`` and reads the
  workers round-robin, which restores the global order exactly as long as each worker emits
  exactly one element per position. So the many-to-one steps, dropping corrupt records and
  batching, run *after* ``mp_prefetch`` in the main process (grain's own ``mp_prefetch`` docs
  warn that a filter before it makes output depend on the worker count).
* **Corrupt files** (corrupt.py). ``Decode`` turns an unreadable record into a marker element;
  the drop step removes it before batching, so a skip never changes the batch size, and adds a
  ``"skipped"`` count per element; ``skipped_total()`` is the running count.
* **Resume.** The iterator's state is grain's position state, so Orbax
  (``grain.checkpoint.CheckpointSave``) restores it at the exact next batch. Skips do not
  disturb this: positions count records, not emitted elements, and the drop step holds no
  state between batches (``skipped_total()`` counts from process start, not from the run's
  start). A resume on another process count cannot use those per-process states: it starts at
  global batch ``step`` (``start_batch``), which is exact unless a process had skipped records.
* **Multi-host.** The global order (shuffle, epochs, per-record augmentation seeds) is defined
  once, identically on every process; global batch ``b`` is positions ``[b*G, (b+1)*G)`` of it.
  Process ``p`` of ``P`` reads only rows ``[p*G/P, (p+1)*G/P)`` of each global batch (so only its
  own records are decoded), and ``to_global_batch`` assembles them in process order. The global
  batch is therefore the same whatever the process count: a 2-process run trains on exactly
  the batches of a 1-process run (tested end to end in tests/test_train.py). Processes read
  disjoint records, which together cover each epoch. Exception: a corrupt record is dropped
  inside its process's slice, so from then on that process's rows shift by one record.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterable

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from psm_jax.data import digits, mask_io, sources, synthetic, transforms
from psm_jax.data.sources import make_source
from psm_jax.data.corrupt import CorruptDataError, count_skipped, drop_corrupt, skipped_total
from psm_jax.data.masks import random_mask
from psm_jax.data.transforms import MaskFn

__all__ = ["CorruptDataError", "Batch", "FileMasks", "SeededMasks", "default_data_config", "default_mask_fn",
           "derive_seed", "make_eval_dataset", "make_source", "make_train_dataset", "make_train_iterator",
           "seeded_eval_masks", "skipped_total", "to_global_batch"]

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]



def default_data_config() -> ml_collections.ConfigDict:
    """``config.data``: every field the pipeline reads, with its default."""
    return ml_collections.ConfigDict(dict(
        # Where training images come from: "synthetic" (procedural, synthetic.py), "digits"
        # (scikit-learn's bundled handwritten digits, digits.py), "folder" (recursive
        # jpg/png/webp/bmp under `path`) or "tfds" (tfds.data_source, ArrayRecord).
        source="synthetic",
        path="",                        # folder source: root folder of the training images
        tfds_name="",                   # tfds source: dataset name, e.g. "places365_small" or a build_tfds name
        tfds_split="train",             # tfds source: training split
        tfds_data_dir="",               # tfds source: data_dir ("" = TFDS default, ~/tensorflow_datasets)
        tfds_image_key="image",         # tfds source: name of the image feature
        synthetic_size=10_000,          # synthetic source: number of training records
        synthetic_kind="layered",       # synthetic source: "layered" or "tiles" (synthetic.py)
        # digits source: half-open index ranges into load_digits() (1,797 digits), and the
        # training shift (px at `resolution`) that replaces the flip + crop (digits.py).
        digits_train=(0, 1500),
        digits_eval=(1500, 1797),
        digits_shift=2,
        resolution=512,                 # crop size R (paper: 512; 256 for the 256 models)
        resize_short=0,                 # >0: resize the shorter side to this before cropping (0 = never)
        mask_kind="large",              # training mask preset: "large" or "small" (MAT's generators)
        hole_range=(0.0, 1.0),          # keep masks whose hole ratio is strictly inside (MAT default [0, 1])
        num_workers=0,                  # grain worker processes per JAX process (0 = in-process)
        read_threads=2,                 # threads per process (or per worker) running decode/augment
        prefetch=4,                     # elements buffered per worker / per read thread
        batch_prefetch=2,               # with workers: batches prefetched by a main-process thread
        seed=0,                         # data seed, mixed with the trainer's seed (and the synthetic images' seed)
        # Unreadable records in a row (in this process's share) after which training stops with an
        # error naming the last files; 0 = two epochs' worth (only "every file is corrupt" stops).
        max_consecutive_corrupt=100,
        # Evaluation (make_eval_dataset). Same source kind as training:
        eval_path="",                   # folder source: root folder of the evaluation images
        eval_split="validation",        # tfds source: evaluation split
        eval_synthetic_size=1_000,      # synthetic source: number of evaluation records
        eval_mask_dir="",               # fixed mask files (255 = known), paired by name; "" = seeded masks
        eval_mask_invert=False,         # the mask PNGs use 255 = hole
        eval_mask_kind="large",         # seeded eval masks: preset
    ))


# ----------------------------------------------------------------------------- helpers


def derive_seed(*parts: int | str) -> int:
    """A uint32 seed from any mix of ints and strings (grain wants seeds in [0, 2**32))."""
    ints = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (2**63) for p in parts]
    return int(np.random.SeedSequence([abs(i) for i in ints]).generate_state(1)[0])


def default_mask_fn(hole_range: tuple[float, float] = (0.0, 1.0)) -> MaskFn:
    """``psm_jax.data.masks.random_mask`` (MAT's free-form generator), the one mask entry point."""
    hole_range = tuple(float(h) for h in hole_range)
    if hole_range == (0.0, 1.0):
        return random_mask
    return functools.partial(random_mask, hole_range=hole_range)


class _Tag(grain.transforms.MapWithIndex):
    """Source record -> ``{"raw", "name", "index"}`` with the record's index in the source."""

    def __init__(self, num_records: int):
        self.num_records = num_records

    def map_with_index(self, index: int, record: Any) -> dict[str, Any]:
        # Downstream `repeat` asks for positions past the end; the source wraps them, so must we.
        index = index % self.num_records
        if isinstance(record, dict):
            return {"raw": record["raw"], "name": record.get("name", str(index)), "index": index}
        return {"raw": record, "name": str(index), "index": index}


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags (STACK_NOTES e, pitfall 2); outside absl.app.run
    # (pytest, notebooks) nobody parsed them, so accept the defaults explicitly.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    if cfg.mask_kind not in ("large", "small"):
        raise ValueError(f"config.data.mask_kind={cfg.mask_kind!r}: expected 'large' or 'small'")
    if cfg.resolution < 8:
        raise ValueError(f"config.data.resolution={cfg.resolution}: expected >= 8")
    if cfg.num_workers < 0:
        raise ValueError(f"config.data.num_workers={cfg.num_workers}: expected >= 0")
    if cfg.get("max_consecutive_corrupt", 0) < 0:
        raise ValueError(f"config.data.max_consecutive_corrupt={cfg.max_consecutive_corrupt}: expected >= 0 "
                         "(0 = two epochs)")
    if cfg.source == "synthetic" and cfg.synthetic_kind not in synthetic.KINDS:
        raise ValueError(f"config.data.synthetic_kind={cfg.synthetic_kind!r}: expected one of "
                         f"{', '.join(map(repr, synthetic.KINDS))}")
    if cfg.source == "digits":
        (a0, a1), (b0, b1) = (tuple(int(v) for v in r) for r in (cfg.digits_train, cfg.digits_eval))
        for name, (lo, hi) in (("digits_train", (a0, a1)), ("digits_eval", (b0, b1))):
            if not 0 <= lo < hi <= digits.NUM_DIGITS:
                raise ValueError(f"config.data.{name}=({lo}, {hi}): expected 0 <= first < stop <= {digits.NUM_DIGITS}")
        if a0 < b1 and b0 < a1:
            raise ValueError(f"config.data.digits_train=({a0}, {a1}) and digits_eval=({b0}, {b1}) overlap; "
                             "held-out digits must not be trained on")
        if not 0 <= cfg.digits_shift < cfg.resolution // 2:
            raise ValueError(f"config.data.digits_shift={cfg.digits_shift}: expected 0 <= shift < resolution / 2")
    if cfg.source == "synthetic" and cfg.synthetic_kind == "tiles" and cfg.resolution % 16:
        raise ValueError(f"config.data.resolution={cfg.resolution}: synthetic_kind 'tiles' needs a multiple of 16")


def _finish(ds: grain.IterDataset, cfg: ml_collections.ConfigDict, batch_size: int, drop_remainder: bool,
            num_workers: int, epoch_size: int) -> grain.IterDataset:
    """Workers (one element in, one out) -> drop corrupt -> batch -> background batch prefetch."""
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=max(1, cfg.prefetch)))
    # Capped at two epochs: a longer run of unreadable records means that none is readable (an
    # epoch may end, and the next begin, with all the bad ones).
    limit = int(cfg.get("max_consecutive_corrupt", 0)) or 2 * epoch_size
    ds = drop_corrupt(ds, max_consecutive=min(limit, 2 * epoch_size))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    # A background thread overlaps drop + batch (np.stack) with the trainer, but only when the
    # elements come from worker processes: in-process, that daemon thread would drive grain's
    # read-thread pool, and interpreter exit with both alive intermittently aborts the process
    # ("FATAL: exception not rethrown", seen 1 in 3 runs).
    if num_workers > 0 and cfg.batch_prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.batch_prefetch)
    return ds.map(count_skipped)


def _read_options(cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=max(1, cfg.read_threads), prefetch_buffer_size=max(1, cfg.prefetch))


# ----------------------------------------------------------------------------- training


class _ProcessRows(grain.MapDataset):
    """Rows ``[offset, offset + rows)`` of every ``group``-sized block of the parent (lazy).

    Local position ``k`` is parent position ``(k // rows) * group + offset + k % rows``, so each
    process evaluates (decodes, augments) only the elements of its own rows.
    """

    def __init__(self, parent: grain.MapDataset, group: int, offset: int, rows: int):
        super().__init__(parent)
        self._group, self._offset, self._rows = group, offset, rows

    def __len__(self) -> int:
        return (len(self._parent) // self._group) * self._rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        block, row = divmod(index, self._rows)
        return self._parent[block * self._group + self._offset + row]

    def __str__(self) -> str:
        return f"ProcessRows(group={self._group}, offset={self._offset}, rows={self._rows})"


def make_train_dataset(cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                       process_index: int | None = None, process_count: int | None = None,
                       mask_fn: MaskFn | None = None, start_batch: int = 0) -> grain.IterDataset:
    """The infinite training ``IterDataset`` of process-local batches (see the module docstring).

    ``start_batch``: begin at global batch ``start_batch`` of the global order. A run resumed on
    another process count cannot use the per-process iterator states of the checkpoint; since
    the global order does not depend on the process layout, it starts here instead.
    """
    _check_config(cfg)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, {process_count})")
    mask_fn = default_mask_fn(tuple(cfg.hole_range)) if mask_fn is None else mask_fn

    source = make_source(cfg, train=True)
    if len(source) < process_count:
        raise ValueError(f"{source!r} has fewer records than there are processes ({process_count})")
    log.info("train source %r, process %d/%d", source, process_index, process_count)
    ds = grain.MapDataset.source(source).map_with_index(_Tag(len(source)))
    ds = ds.shuffle(seed=derive_seed(seed, cfg.seed, "shuffle"))
    ds = ds.repeat(None)  # infinite; ShuffleMapDataset permutes each epoch with its own seed
    ds = ds.map(transforms.Decode(cfg.resize_short))
    # The augmentation seed depends on the global position only, never on the process layout.
    if cfg.source == "digits":   # no flip: a mirrored digit is not a digit (digits.py)
        augment = digits.DigitsAugment(cfg.resolution, mask_fn, cfg.mask_kind, cfg.digits_shift)
    else:
        augment = transforms.TrainAugment(cfg.resolution, mask_fn, cfg.mask_kind)
    ds = ds.random_map(augment, seed=derive_seed(seed, cfg.seed, "augment"))
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch}: expected >= 0")
    if start_batch:
        ds = ds[start_batch * global_batch_size:]   # lazy: positions are computed, not read
    local_batch = global_batch_size // process_count
    ds = _ProcessRows(ds, global_batch_size, process_index * local_batch, local_batch)
    ds = ds.to_iter_dataset(_read_options(cfg))
    return _finish(ds, cfg, local_batch, True, cfg.num_workers, len(source))


def make_train_iterator(cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None,
                        mask_fn: MaskFn | None = None, start_batch: int = 0) -> grain.DatasetIterator:
    """An infinite iterator of process-local numpy batches (``global_batch_size // process_count``).

    Batches: ``image`` float32 [b,R,R,3] in [-1,1], ``mask`` float32 [b,R,R,1] (1 = known),
    ``index`` int64 [b] (record index in the source), ``skipped`` int32 [b]. The iterator has
    ``get_state``/``set_state`` and works with ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``.
    ``mask_fn`` replaces ``psm_jax.data.masks.random_mask`` (tests, other mask families).
    """
    return iter(make_train_dataset(cfg, global_batch_size=global_batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count,
                                   mask_fn=mask_fn, start_batch=start_batch))


# ----------------------------------------------------------------------------- evaluation


class SeededMasks:
    """Eval mask for record ``i``: ``mask_fn`` driven by an RNG seeded from (seed, i)."""

    def __init__(self, seed: int, resolution: int, kind: str, mask_fn: MaskFn):
        self.seed, self.resolution, self.kind, self.mask_fn = seed, resolution, kind, mask_fn

    def __call__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return self.mask_fn(rng, self.resolution, self.kind)


def seeded_eval_masks(seed: int, resolution: int, kind: str, hole_range: tuple[float, float] = (0.0, 1.0),
                      mask_fn: MaskFn | None = None) -> SeededMasks:
    """The fixed eval mask of every record index for ``seed``: the same masks for the in-training
    evaluator and ``python -m psm_jax.evaluate --masks large|small`` at the same seed."""
    mask_fn = default_mask_fn(hole_range) if mask_fn is None else mask_fn
    return SeededMasks(derive_seed(seed, "eval_masks"), resolution, kind, mask_fn)


class FileMasks:
    """Eval mask for record ``i``: ``paths[i]`` read with ``mask_io.load_mask`` (255 = known)."""

    def __init__(self, paths: list[str], invert: bool = False):
        self.paths, self.invert = [str(p) for p in paths], invert

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, index: int) -> np.ndarray:
        return mask_io.load_mask(self.paths[index], invert=self.invert)


def _file_masks(cfg: ml_collections.ConfigDict, source: Any, n: int) -> FileMasks:
    """Fixed masks from ``cfg.eval_mask_dir`` in the source's record order (MAT's protocol).

    A folder source is paired by file name (``mask_io.pair_masks``: same stem or same trailing
    number; counts must match), so a renamed or missing mask is an error, not a silent shift.
    TFDS and synthetic records have no file names: record ``i`` gets the i-th mask by sorted name.
    """
    if isinstance(source, sources.FolderSource):
        try:
            pairs = mask_io.pair_masks(source.paths, cfg.eval_mask_dir)
        except mask_io.MaskPairingError as e:
            raise ValueError(f"config.data.eval_mask_dir: {e}") from None
        by_image = {str(image): str(mask) for image, mask in pairs}
        return FileMasks([by_image[p] for p in source.paths], cfg.eval_mask_invert)
    paths = mask_io.list_mask_files(cfg.eval_mask_dir)
    if len(paths) < n:
        raise ValueError(f"config.data.eval_mask_dir={cfg.eval_mask_dir!r} holds {len(paths)} masks, "
                         f"fewer than the {n} eval images")
    return FileMasks(paths, cfg.eval_mask_invert)


def make_eval_dataset(cfg: ml_collections.ConfigDict, *, batch_size: int, num_images: int | None, seed: int,
                      mask_fn: MaskFn | None = None) -> grain.IterDataset:
    """Finite, deterministic, re-iterable batches of the first ``num_images`` eval records.

    Centre crop (reflect pad if small) and fixed masks: from ``eval_mask_dir`` if set (paired
    by file name for a folder, by sorted order otherwise; see ``_file_masks``), else ``mask_fn``
    seeded from (seed, i). Same keys as training. The last
    batch may be smaller than ``batch_size`` (it holds the remainder); unreadable records are
    skipped (so a corrupt file reduces the count, and is reported in ``"skipped"``).
    ``num_images=None`` (or <= 0) means the whole split.
    """
    _check_config(cfg)
    source = make_source(cfg, train=False)
    n = len(source) if not num_images or num_images <= 0 else int(num_images)
    if n > len(source):
        raise ValueError(f"eval: num_images={n} but {source!r} holds only {len(source)} records")
    if cfg.eval_mask_dir:
        mask_for_index: Callable[[int], np.ndarray] = _file_masks(cfg, source, n)
    else:
        mask_for_index = seeded_eval_masks(seed, cfg.resolution, cfg.eval_mask_kind, tuple(cfg.hole_range), mask_fn)
    ds = grain.MapDataset.source(source).map_with_index(_Tag(len(source)))[:n]
    ds = ds.map(transforms.Decode(cfg.resize_short))
    ds = ds.map(transforms.EvalTransform(cfg.resolution, mask_for_index))
    ds = ds.to_iter_dataset(_read_options(cfg))
    return _finish(ds, cfg, batch_size, False, 0, n)


# ----------------------------------------------------------------------------- device


def to_global_batch(batch: Batch, sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Process-local numpy batches -> global ``jax.Array``s, split along the batch axis.

    ``sharding``'s spec applies to every array with at least as many dims; lower-rank arrays
    (``index``, ``skipped``) use only its leading entries, i.e. stay sharded on the batch axis.
    """
    spec = tuple(sharding.spec)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        s = sharding
        if len(spec) > value.ndim:
            s = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[:value.ndim]))
        out[key] = jax.make_array_from_process_local_data(s, value)
    return out


def iterate_global(it: Iterable[Batch], sharding: jax.sharding.NamedSharding) -> Iterable[dict[str, jax.Array]]:
    """Convenience generator: ``to_global_batch`` over an iterator of local batches."""
    for batch in it:
        yield to_global_batch(batch, sharding)
