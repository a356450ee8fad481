"""Tests for psm_jax.data.pipeline (grain training/eval pipelines; issue 4 items 5-7)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from psm_jax.data import mask_io, pipeline


def box_mask(rng: np.random.Generator, res: int, kind: str) -> np.ndarray:
    """Stand-in mask generator: one random square hole, drawn from the record RNG."""
    m = np.ones((res, res), np.float32)
    y, x = rng.integers(0, res // 2, size=2)
    m[y:y + res // 2, x:x + res // 2] = 0
    return m


def _cfg(**kw):
    cfg = pipeline.default_data_config()
    cfg.update(dict(resolution=16, synthetic_size=24, read_threads=1), **kw)
    return cfg


def _iter(cfg, bs=4, seed=0, p=0, n=1, mask_fn=box_mask):
    return pipeline.make_train_iterator(cfg, global_batch_size=bs, seed=seed, process_index=p,
                                        process_count=n, mask_fn=mask_fn)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def mixed_folder(root) -> None:
    """The acceptance folder: a corrupt file, a grayscale PNG, an RGBA PNG, a tiny image, plus RGB."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(root / f"rgb{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(root / "tiny.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


# -- config and batches --------------------------------------------------------------------------

def test_default_config_fields():
    cfg = pipeline.default_data_config()
    for field in ("source", "path", "tfds_name", "tfds_split", "tfds_data_dir", "synthetic_size", "synthetic_kind",
                  "resolution", "mask_kind", "hole_range", "num_workers", "prefetch", "seed", "eval_split", "eval_path",
                  "eval_mask_dir"):
        assert field in cfg, field


def test_batch_layout():
    b = next(_iter(_cfg()))
    assert set(b) == {"image", "mask", "index", "skipped"}
    assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (4, 16, 16, 1) and b["mask"].dtype == np.float32
    assert -1.0 <= b["image"].min() < 0 < b["image"].max() <= 1.0
    assert set(np.unique(b["mask"])) == {0.0, 1.0}
    assert b["index"].shape == (4,) and b["skipped"].tolist() == [0, 0, 0, 0]


def test_deterministic_given_seed_and_seed_matters():
    a = _take(_iter(_cfg(), seed=1), 3)
    _assert_same(a, _take(_iter(_cfg(), seed=1), 3))
    other = _take(_iter(_cfg(), seed=2), 3)
    assert not np.array_equal(a[0]["index"], other[0]["index"])
    # The data seed in the config is mixed in too.
    assert not np.array_equal(a[0]["image"], _take(_iter(_cfg(seed=5), seed=1), 1)[0]["image"])


def test_read_threads_do_not_change_output():
    _assert_same(_take(_iter(_cfg(read_threads=1)), 4), _take(_iter(_cfg(read_threads=3)), 4))


def test_epochs_cover_everything_and_reshuffle():
    it = _iter(_cfg(synthetic_size=12), bs=4)
    idx = [np.concatenate([next(it)["index"] for _ in range(3)]) for _ in range(3)]  # 3 epochs of 12
    for epoch in idx:
        assert sorted(epoch.tolist()) == list(range(12))
    assert not np.array_equal(idx[0], idx[1]) and not np.array_equal(idx[1], idx[2])


def test_masks_come_from_mask_fn_and_differ_per_record():
    b = next(_iter(_cfg(), bs=8))
    holes = (b["mask"][..., 0] == 0).sum(axis=(1, 2))
    assert (holes == 64).all()  # box_mask: one 8x8 hole at 16x16
    assert len({m.tobytes() for m in b["mask"]}) > 1


def test_real_mask_generator_is_the_default():
    b = next(_iter(_cfg(resolution=64), bs=2, mask_fn=None))
    assert b["mask"].shape == (2, 64, 64, 1)
    assert 0 < (b["mask"] == 0).mean() < 1


# -- resume --------------------------------------------------------------------------------------

def test_exact_resume_mid_epoch_with_get_set_state():
    ref = _take(_iter(_cfg()), 8)
    it = _iter(_cfg())
    _take(it, 3)  # 3 of 6 batches of the first epoch
    state = it.get_state()
    it2 = _iter(_cfg())
    it2.set_state(json.loads(json.dumps(state)))  # the state is plain JSON
    _assert_same(_take(it2, 5), ref[3:])


def test_exact_resume_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    ref = _take(_iter(_cfg()), 6)
    it = _iter(_cfg())
    _take(it, 2)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    mngr.close()
    it2 = _iter(_cfg())
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    _assert_same(_take(it2, 4), ref[2:])


# -- multi-process sharding ----------------------------------------------------------------------

def test_two_processes_get_disjoint_covering_shards():
    cfg = _cfg(synthetic_size=20)
    seen = []
    for p in range(2):
        it = _iter(cfg, bs=4, p=p, n=2)
        b = next(it)
        assert b["image"].shape[0] == 2  # global 4 / 2 processes
        seen.append(set(np.concatenate([b["index"]] + [next(it)["index"] for _ in range(4)]).tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(20))


def test_global_batch_does_not_depend_on_the_process_count():
    # Process p's batch is rows [p*L, (p+1)*L) of the single-process global batch, pixels included,
    # so a 2-process run trains on exactly the batches of a 1-process run.
    cfg = _cfg(synthetic_size=20)
    single = _iter(cfg, bs=4, p=0, n=1)
    parts = [_iter(cfg, bs=4, p=p, n=2) for p in range(2)]
    for _ in range(7):  # crosses an epoch boundary (20 records, 5 batches per epoch)
        ref = next(single)
        got = [next(it) for it in parts]
        for key in ("index", "image", "mask"):
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), ref[key])


def test_bad_sharding_arguments():
    with pytest.raises(ValueError, match="not divisible"):
        _iter(_cfg(), bs=5, n=2)
    with pytest.raises(ValueError, match="process_index"):
        _iter(_cfg(), bs=4, p=2, n=2)


# -- folder with bad files -----------------------------------------------------------------------

def test_mixed_folder_yields_correct_batches_and_skips_one(tmp_path, caplog):
    mixed_folder(tmp_path / "img")
    cfg = _cfg(source="folder", path=str(tmp_path / "img"))  # 8 files, 7 readable
    before = pipeline.skipped_total()
    with caplog.at_level(logging.WARNING):
        it = _iter(cfg, bs=7)
        epoch = next(it)
    assert epoch["image"].shape == (7, 16, 16, 3) and epoch["mask"].shape == (7, 16, 16, 1)
    assert np.isfinite(epoch["image"]).all() and -1 <= epoch["image"].min() and epoch["image"].max() <= 1
    assert int(epoch["skipped"].sum()) == 1
    assert pipeline.skipped_total() - before == 1
    assert "corrupt.jpg" in caplog.text
    # Every readable record exactly once; the corrupt one (sorted index 0) never.
    assert sorted(epoch["index"].tolist()) == list(range(1, 8))
    # Grayscale became RGB (equal channels), tiny (5x7) was reflect-padded to 16x16.
    names = sorted(p.name for p in (tmp_path / "img").iterdir())
    gray = epoch["image"][list(epoch["index"]).index(names.index("gray.png"))]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    # Skips do not shift later batches: the next epoch still has 7 good images.
    nxt = next(it)
    assert sorted(nxt["index"].tolist()) == list(range(1, 8)) and int(nxt["skipped"].sum()) == 1


def test_mixed_folder_resume_is_exact_across_a_skip(tmp_path):
    mixed_folder(tmp_path / "img")
    cfg = _cfg(source="folder", path=str(tmp_path / "img"))
    ref = _take(_iter(cfg, bs=3), 6)
    it = _iter(cfg, bs=3)
    _take(it, 2)
    it2 = _iter(cfg, bs=3)
    it2.set_state(it.get_state())
    _assert_same(_take(it2, 4), ref[2:])


def test_all_corrupt_folder_raises_instead_of_spinning(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"garbage")
    it = _iter(_cfg(source="folder", path=str(tmp_path / "img")), bs=2)
    # The limit (100) is capped at two epochs (6 records): the 7th corrupt record in a row stops it.
    with pytest.raises(pipeline.CorruptDataError, match="7 unreadable training records in a row"):
        next(it)


def test_consecutive_corrupt_limit_stops_and_names_the_last_files(tmp_path):
    """Past data.max_consecutive_corrupt unreadable records in a row: an error naming the last 3."""
    root = tmp_path / "img"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"good{i}.png")
    for i in range(6):
        (root / f"bad{i}.png").write_bytes(b"garbage")
    cfg = _cfg(source="folder", path=str(root), max_consecutive_corrupt=2)
    it = pipeline.make_train_iterator(cfg, global_batch_size=2, seed=0, process_index=0, process_count=1,
                                      mask_fn=box_mask)
    with pytest.raises(pipeline.CorruptDataError) as e:
        for _ in range(8):   # some epoch's shuffle puts 3 bad files in a row before a good one
            next(it)
    msg = str(e.value)
    assert "3 unreadable training records in a row" in msg and "max_consecutive_corrupt=2" in msg
    named = [n for n in msg.split("the last: ")[1].split(", ")]
    assert len(named) == 3 and all(Path(n).name.startswith("bad") for n in named), msg
    # Below the limit the same folder trains: 2 in a row are skipped and counted.
    cfg.max_consecutive_corrupt = 6
    batch = next(pipeline.make_train_iterator(cfg, global_batch_size=2, seed=0, process_index=0,
                                              process_count=1, mask_fn=box_mask))
    assert batch["image"].shape[0] == 2
    with pytest.raises(ValueError, match="max_consecutive_corrupt=-1"):
        _iter(_cfg(max_consecutive_corrupt=-1))


@pytest.mark.parametrize("n", [1, 2])
def test_start_batch_continues_the_global_order(n):
    """A resume on another process count starts at global batch `step`: the batches an
    uninterrupted run would read next, row for row, whatever the process count."""
    cfg = _cfg()
    ref = _take(_iter(cfg, bs=4), 9)          # one process; 24 records, so past an epoch
    parts = [pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=i,
                                          process_count=n, mask_fn=box_mask, start_batch=5)
             for i in range(n)]
    for b in range(5, 9):
        local = [next(it) for it in parts]
        got = {k: np.concatenate([x[k] for x in local]) for k in ref[b]}
        _assert_same([got], [ref[b]])
    with pytest.raises(ValueError, match="start_batch=-1"):
        pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, start_batch=-1)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="config.data.source='s3'"):
        _iter(_cfg(source="s3"))
    with pytest.raises(ValueError, match="config.data.path is empty"):
        _iter(_cfg(source="folder"))
    with pytest.raises(ValueError, match="mask_kind"):
        _iter(_cfg(mask_kind="huge"))
    with pytest.raises(ValueError, match="tfds_name is empty"):
        _iter(_cfg(source="tfds"))
    with pytest.raises(ValueError, match="config.data.synthetic_kind='grid'"):
        _iter(_cfg(synthetic_kind="grid"))
    with pytest.raises(ValueError, match="config.data.resolution=24: synthetic_kind 'tiles'"):
        _iter(_cfg(synthetic_kind="tiles", resolution=24))


def test_synthetic_kind_reaches_train_and_eval_sources():
    from psm_jax.data.synthetic import render_tiles
    cfg = _cfg(synthetic_kind="tiles")
    for src in (pipeline.make_source(cfg), pipeline.make_source(cfg, train=False)):
        assert src.kind == "tiles"
        np.testing.assert_array_equal(
            src[3], render_tiles(np.random.default_rng(np.random.SeedSequence([src.seed, 3])), 16))


# -- evaluation ----------------------------------------------------------------------------------

def test_eval_is_deterministic_finite_and_keeps_the_remainder():
    cfg = _cfg(eval_synthetic_size=10)
    ev = list(pipeline.make_eval_dataset(cfg, batch_size=4, num_images=10, seed=0, mask_fn=box_mask))
    assert [b["image"].shape[0] for b in ev] == [4, 4, 2]
    assert np.concatenate([b["index"] for b in ev]).tolist() == list(range(10))
    again = list(pipeline.make_eval_dataset(cfg, batch_size=5, num_images=10, seed=0, mask_fn=box_mask))
    # Masks are fixed per image index, whatever the batch size.
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in ev]), np.concatenate([b["mask"] for b in again]))
    other_seed = list(pipeline.make_eval_dataset(cfg, batch_size=5, num_images=10, seed=1, mask_fn=box_mask))
    assert not np.array_equal(again[0]["mask"], other_seed[0]["mask"])
    np.testing.assert_array_equal(again[0]["image"], other_seed[0]["image"])


def test_eval_images_are_not_training_images():
    cfg = _cfg()
    ev = next(iter(pipeline.make_eval_dataset(cfg, batch_size=2, num_images=2, seed=0, mask_fn=box_mask)))
    train_src = pipeline.make_source(cfg, train=True)
    assert not np.array_equal(ev["image"][0], train_src[0].astype(np.float32) / 127.5 - 1)


def _stripe_mask(i: int, res: int = 16) -> np.ndarray:
    m = np.ones((res, res), np.float32)
    m[i:i + 4, :] = 0
    return m


def test_eval_masks_from_a_mask_dir_pair_by_file_name(tmp_path):
    mixed_folder(tmp_path / "img")
    names = sorted(p.name for p in (tmp_path / "img").iterdir())
    (tmp_path / "masks").mkdir()
    for i, name in enumerate(names):  # same stem, different extension and content per image
        mask_io.save_mask(tmp_path / "masks" / (name.rsplit(".", 1)[0] + ".png"), _stripe_mask(i))
    cfg = _cfg(source="folder", eval_path=str(tmp_path / "img"), eval_mask_dir=str(tmp_path / "masks"))
    batches = list(pipeline.make_eval_dataset(cfg, batch_size=4, num_images=None, seed=0))
    idx = np.concatenate([b["index"] for b in batches])
    got = np.concatenate([b["mask"] for b in batches])[..., 0]
    assert len(idx) == 7  # the corrupt file is skipped
    for i, m in zip(idx, got):
        np.testing.assert_array_equal(m, _stripe_mask(i))
    (tmp_path / "masks" / "gray.png").unlink()
    with pytest.raises(ValueError, match="eval_mask_dir: 8 images but 7 mask files"):
        pipeline.make_eval_dataset(cfg, batch_size=4, num_images=None, seed=0)


def test_eval_masks_from_a_mask_dir_by_order_for_unnamed_records(tmp_path):
    (tmp_path / "masks").mkdir()
    for i in range(3):
        mask_io.save_mask(tmp_path / "masks" / f"m{i}.png", _stripe_mask(i))
    cfg = _cfg(eval_mask_dir=str(tmp_path / "masks"))  # synthetic records have no names
    b = next(iter(pipeline.make_eval_dataset(cfg, batch_size=3, num_images=3, seed=0)))
    for i in range(3):
        np.testing.assert_array_equal(b["mask"][i, ..., 0], _stripe_mask(i))
    with pytest.raises(ValueError, match="holds 3 masks, fewer than the 4"):
        pipeline.make_eval_dataset(cfg, batch_size=4, num_images=4, seed=0)


def test_hole_range_reaches_the_real_generator():
    it = _iter(_cfg(resolution=64, hole_range=(0.3, 0.6)), bs=8, mask_fn=None)
    holes = [(next(it)["mask"] == 0).mean(axis=(1, 2, 3)) for _ in range(2)]
    assert all(0.3 < h < 0.6 for h in np.concatenate(holes))


def test_eval_num_images_beyond_source_is_an_error():
    with pytest.raises(ValueError, match="num_images=11"):
        pipeline.make_eval_dataset(_cfg(eval_synthetic_size=10), batch_size=4, num_images=11, seed=0,
                                   mask_fn=box_mask)


# -- global arrays -------------------------------------------------------------------------------

def test_to_global_batch_keeps_values_and_shards_the_batch_axis():
    n = len(jax.devices())
    mesh = jax.make_mesh((n,), ("data",))
    b = next(_iter(_cfg(), bs=2 * n))
    for spec in (jax.sharding.PartitionSpec("data"), jax.sharding.PartitionSpec("data", None, None, None)):
        g = pipeline.to_global_batch(b, jax.sharding.NamedSharding(mesh, spec))
        assert set(g) == set(b)
        for k in b:
            assert isinstance(g[k], jax.Array) and g[k].shape == b[k].shape
            np.testing.assert_array_equal(np.asarray(g[k]), b[k])
            assert g[k].sharding.spec[0] == "data"


# -- worker processes (subprocess: spawn needs a __main__ guard) --------------------------------

_WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from psm_jax.data import pipeline

    def box_mask(rng, res, kind):
        m = np.ones((res, res), np.float32)
        y, x = rng.integers(0, res // 2, size=2)
        m[y:y + res // 2, x:x + res // 2] = 0
        return m

    def run(cfg, workers, k, state=None, save_at=None):
        cfg.num_workers = workers
        it = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0,
                                          process_count=1, mask_fn=box_mask)
        if state is not None:
            it.set_state(state)
        out, saved = [], None
        for i in range(k):
            out.append(next(it))
            if i + 1 == save_at:
                saved = it.get_state()
        it.close()
        return out, saved

    def same(a, b):
        return all(np.array_equal(x[key], y[key]) for x, y in zip(a, b) for key in x) and len(a) == len(b)

    if __name__ == "__main__":
        cfg = pipeline.default_data_config()
        cfg.update(source="folder", path=sys.argv[1], resolution=16, read_threads=1)
        ref, state0 = run(cfg, 0, 6, save_at=2)
        two, state2 = run(cfg, 2, 6, save_at=2)
        resumed, _ = run(cfg, 2, 4, state=state2)
        print(json.dumps({
            "same_0_vs_2_workers": same(ref, two),
            "resume_2_workers": same(resumed, two[2:]),
            "skipped_per_batch": [int(b["skipped"].sum()) for b in two],
            "skipped_total": pipeline.skipped_total(),
        }))
""")


@pytest.mark.slow
def test_two_workers_match_zero_workers_and_resume_exactly(tmp_path):
    mixed_folder(tmp_path / "img")  # 7 good + 1 corrupt: skips are in play with workers too
    script = tmp_path / "workers.py"
    script.write_text(_WORKER_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "img")], capture_output=True, text=True,
                       timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["same_0_vs_2_workers"] and res["resume_2_workers"], res
    # The per-batch skip counts travel with the batches from the workers and equal the in-process
    # ones (6 batches of 4 = 24 good records cross the corrupt file 3 or 4 times).
    ref = _take(_iter(_cfg(source="folder", path=str(tmp_path / "img")), bs=4), 6)
    per_batch = [int(b["skipped"].sum()) for b in ref]
    assert res["skipped_per_batch"] == per_batch and sum(per_batch) in (3, 4), res
    # Counted in the subprocess's main process: 0-worker run, 2-worker run, resumed 2-worker run.
    assert res["skipped_total"] == 2 * sum(per_batch) + sum(per_batch[2:]), res
