"""Every command refuses bad input the same way: exit code 2, no traceback, one line that names the
flag, field or file and what was expected, and nothing written to the output location.

Each case is ``(command args, text the one line must contain, output path that must not appear)``
(the output may be a glob: nothing may match it). ``{tmp}`` is a fresh directory, ``{empty}`` an empty
one, ``{corrupt}`` a folder holding only corrupt images, ``{file}`` an ordinary file, ``{badconfig}`` a
config file that raises on import, ``{sweeps}`` a config file whose sweeps name their runs badly,
``{typo}`` one whose sweep misspells an override, ``{images}``/``{masks}`` a good image and its mask,
``{shell}`` a workdir with an empty checkpoints folder, ``{damaged}`` a workdir whose step 3 is damaged,
``{objnpz}`` an .npz holding a pickled object, ``{sweepdir}`` a sweep folder with an empty sweep.json.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/demo.py:tiny"
MAIN = ["-m", "psm_jax.main"]

CASES = {
    # ---- training (python -m psm_jax.main)
    "main_missing_config_file": ([*MAIN, "--config=configs/nope.py", "--workdir={tmp}/w"], "nope.py", "{tmp}/w"),
    "main_config_does_not_import": ([*MAIN, "--config={badconfig}", "--workdir={tmp}/w"], "boom", "{tmp}/w"),
    "main_unknown_variant": ([*MAIN, "--config=configs/psm.py:huge", "--workdir={tmp}/w"], "huge", "{tmp}/w"),
    "main_unknown_config_arg": ([*MAIN, "--config=configs/psm.py:A,speed=3", "--workdir={tmp}/w"], "speed",
                                "{tmp}/w"),
    "main_override_typo": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.optim.lrr=1"], "lrr",
                           "{tmp}/w"),
    "main_override_wrong_type": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.batch_size=abc"],
                                 "batch_size", "{tmp}/w"),
    "main_missing_workdir_flag": ([*MAIN, f"--config={TINY}"], "workdir", None),
    "main_workdir_is_a_file": ([*MAIN, f"--config={TINY}", "--workdir={file}"], "not a directory", None),
    "main_unknown_schedule": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.spread.schedule=exp"],
                              "schedule", "{tmp}/w/checkpoints"),
    "main_unknown_picker": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.spread.picker=heap"],
                            "picker", "{tmp}/w/checkpoints"),
    "main_negative_corrupt_limit": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w",
                                     "--config.data.max_consecutive_corrupt=-1"], "max_consecutive_corrupt",
                                    "{tmp}/w/checkpoints"),
    "main_unknown_uncertainty_map": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w",
                                      "--config.spread.uncertainty_map=softmax"], "uncertainty_map",
                                     "{tmp}/w/checkpoints"),
    "main_unknown_source": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.source=s3"],
                            "data.source", "{tmp}/w/checkpoints"),
    "main_unknown_mask_kind": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.mask_kind=huge"],
                               "mask_kind", "{tmp}/w/checkpoints"),
    "main_missing_image_folder": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.source=folder",
                                   "--config.data.path={tmp}/none"], "none", "{tmp}/w/checkpoints"),
    "main_empty_image_folder": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.source=folder",
                                 "--config.data.path={empty}"], "no images", "{tmp}/w/checkpoints"),
    "main_tfds_not_prepared": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.source=tfds",
                                "--config.data.tfds_name=not_a_dataset_xyz",
                                "--config.data.tfds_data_dir={tmp}/tfds"], "not_a_dataset_xyz",
                               "{tmp}/w/checkpoints"),
    "main_zero_batch": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.batch_size=0"], "batch_size",
                        "{tmp}/w"),
    "main_negative_steps": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.total_steps=-5"],
                            "total_steps", "{tmp}/w"),
    "main_fsdp_not_dividing": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.mesh.fsdp=3"], "fsdp",
                               "{tmp}/w/checkpoints"),
    "main_bad_r1_interval": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.loss.r1_interval=0"],
                             "r1_interval", "{tmp}/w/checkpoints"),
    "main_missing_config_flag": ([*MAIN, "--workdir={tmp}/w"], "--config is missing", "{tmp}/w"),
    "main_unknown_flag": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--bogus=1"], "--bogus", "{tmp}/w"),
    "main_unknown_test_noise_mode": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w",
                                      "--config.spread.test_noise_mode=loud"], "test_noise_mode",
                                     "{tmp}/w/checkpoints"),
    "main_unknown_pcp_reduction": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w",
                                    "--config.loss.pcp_reduction=max"], "pcp_reduction", "{tmp}/w/checkpoints"),
    # Every file unreadable: the error line only, no skip warning before it, and no checkpoint.
    "main_only_corrupt_images": ([*MAIN, f"--config={TINY}", "--workdir={tmp}/w", "--config.data.source=folder",
                                  "--config.data.path={corrupt}"], "max_consecutive_corrupt",
                                 "{tmp}/w/checkpoints/*"),
    "main_resume_damaged_checkpoint": ([*MAIN, f"--config={TINY}", "--workdir={damaged}"], "checkpoint step 3",
                                       "{damaged}/checkpoints_unreadable"),
    # ---- inference, export, demo
    "inpaint_missing_checkpoint": (["-m", "psm_jax.inpaint", "--workdir", "{tmp}/none", "--images", "{corrupt}",
                                    "--masks", "{corrupt}", "--out", "{tmp}/o"], "none", "{tmp}/o"),
    "inpaint_bad_strategy": (["-m", "psm_jax.inpaint", "--workdir", "{empty}", "--images", "{corrupt}",
                              "--masks", "{corrupt}", "--out", "{tmp}/o", "--strategy", "tile"], "strategy",
                             "{tmp}/o"),
    "inpaint_out_is_a_file": (["-m", "psm_jax.inpaint", "--workdir", "{shell}", "--images", "{images}",
                               "--masks", "{masks}", "--out", "{file}"], "expected a folder", None),
    "inpaint_out_under_a_file": (["-m", "psm_jax.inpaint", "--workdir", "{shell}", "--images", "{images}",
                                  "--masks", "{masks}", "--out", "{file}/o"], "is a file", None),
    "inpaint_damaged_checkpoint": (["-m", "psm_jax.inpaint", "--workdir", "{damaged}", "--images", "{images}",
                                    "--masks", "{masks}", "--out", "{tmp}/o"], "checkpoint step 3", "{tmp}/o"),
    "inpaint_unpaired_mask": (["-m", "psm_jax.inpaint", "--workdir", "{shell}", "--images", "{images}",
                               "--masks", "{corrupt}", "--out", "{tmp}/o"], "--masks", "{tmp}/o"),
    "export_out_is_a_folder": (["-m", "psm_jax.export", "--workdir", "{damaged}", "--out", "{empty}"],
                               "is a folder", None),
    "export_damaged_checkpoint": (["-m", "psm_jax.export", "--workdir", "{damaged}", "--out", "{tmp}/f.jaxexport"],
                                  "checkpoint step 3", "{tmp}/f.jaxexport"),
    "export_missing_workdir": (["-m", "psm_jax.export", "--workdir", "{tmp}/none", "--out", "{tmp}/f.jaxexport"],
                               "none", "{tmp}/f.jaxexport"),
    "export_bad_platform": (["-m", "psm_jax.export", "--workdir", "{empty}", "--out", "{tmp}/f.jaxexport",
                             "--platforms", "quantum"], "quantum", "{tmp}/f.jaxexport"),
    "demo_bad_config": (["-m", "psm_jax.demo", "--workdir", "{tmp}/d", "--config", "configs/nope.py"], "nope.py",
                        "{tmp}/d"),
    # ---- checkpoints, summary
    "digest_missing_workdir": (["-m", "psm_jax.checkpoint", "digest", "{tmp}/none"], "none", None),
    "digest_no_checkpoint": (["-m", "psm_jax.checkpoint", "digest", "{empty}"], "checkpoint", None),
    "summary_unknown_variant": (["-m", "psm_jax.models.summary", "--variant", "huge"], "huge", None),
    "summary_missing_config": (["-m", "psm_jax.models.summary", "--config", "configs/nope.py"], "nope.py", None),
    "summary_zero_batch": (["-m", "psm_jax.models.summary", "--variant", "tiny", "--batch_size", "0"],
                           "--batch_size", None),
    "digest_damaged_checkpoint": (["-m", "psm_jax.checkpoint", "digest", "{damaged}"], "checkpoint step 3", None),
    # ---- masks and datasets
    "make_masks_unknown_kind": (["-m", "psm_jax.data.make_masks", "--kind", "huge", "--num", "2", "--out",
                                 "{tmp}/m"], "kind", "{tmp}/m"),
    "make_masks_zero_count": (["-m", "psm_jax.data.make_masks", "--num", "0", "--out", "{tmp}/m"], "num",
                              "{tmp}/m"),
    "make_masks_negative_resolution": (["-m", "psm_jax.data.make_masks", "--num", "2", "--resolution", "-8",
                                        "--out", "{tmp}/m"], "resolution", "{tmp}/m"),
    "make_masks_out_is_a_file": (["-m", "psm_jax.data.make_masks", "--num", "2", "--out", "{file}"], "file", None),
    "make_masks_out_under_a_file": (["-m", "psm_jax.data.make_masks", "--num", "2", "--out", "{file}/m"],
                                    "is a file", None),
    "build_tfds_out_is_a_file": (["-m", "psm_jax.data.build_tfds", "--images", "{images}", "--out", "{file}",
                                  "--name", "x"], "expected a folder", None),
    "build_tfds_missing_images": (["-m", "psm_jax.data.build_tfds", "--images", "{tmp}/none", "--out",
                                   "{tmp}/t", "--name", "x"], "none", "{tmp}/t"),
    "build_tfds_only_corrupt_images": (["-m", "psm_jax.data.build_tfds", "--images", "{corrupt}", "--out",
                                        "{tmp}/t", "--name", "x"], "corrupt", "{tmp}/t/x"),
    "mask_stats_missing_folder": (["-m", "psm_jax.data.mask_stats", "--masks", "{tmp}/none"], "none", None),
    "build_tfds_bad_name": (["-m", "psm_jax.data.build_tfds", "--images", "{corrupt}", "--out", "{tmp}/t",
                             "--name", "Bad Name!"], "name", "{tmp}/t"),
    # ---- sweeps
    "sweep_unknown_sweep": (["-m", "launch.sweep", "configs/psm.py:table9", "--dry_run"], "table9", None),
    "sweep_missing_config": (["-m", "launch.sweep", "configs/nope.py:table1", "--dry_run"], "nope.py", None),
    "sweep_run_name_climbs_out": (["-m", "launch.sweep", "{sweeps}:up", "--workdir_root", "{tmp}/root"],
                                  "'../escape'", "{tmp}/escape"),
    "sweep_run_name_absolute": (["-m", "launch.sweep", "{sweeps}:abs", "--workdir_root", "{tmp}/root"],
                                "'/tmp/psm_abs_escape'", "/tmp/psm_abs_escape"),
    "sweep_run_names_clash": (["-m", "launch.sweep", "{sweeps}:twice", "--workdir_root", "{tmp}/root"],
                              "two runs are named 'a'", "{tmp}/root"),
    "sweep_override_typo": (["-m", "launch.sweep", "{typo}:t", "--workdir_root", "{tmp}/root"], "lrr",
                            "{tmp}/root"),
    "sweep_bad_launcher": (["-m", "launch.sweep", "configs/psm.py:table1", "--launcher", "k8s"], "launcher", None),
    "sweep_root_is_a_file": (["-m", "launch.sweep", "configs/psm.py:smoke", "--workdir_root", "{file}"],
                             "not a directory", None),
    "collect_missing_dir": (["-m", "launch.collect", "{tmp}/none"], "none", "{tmp}/none"),
    "collect_out_is_a_folder": (["-m", "launch.collect", "{sweepdir}", "--out", "{empty}"], "is a folder", None),
    "collect_no_sweep_json": (["-m", "launch.collect", "{empty}"], "sweep.json", "{empty}/results.md"),
    # ---- evaluation and converters
    "evaluate_missing_workdir": (["-m", "psm_jax.evaluate", "--workdir", "{tmp}/none", "--images", "{corrupt}",
                                  "--masks", "large", "--iters", "2", "--inception", "{file}", "--out",
                                  "{tmp}/r.json"], "none", "{tmp}/r.json"),
    "evaluate_bad_iters": (["-m", "psm_jax.evaluate", "--workdir", "{empty}", "--images", "{corrupt}",
                            "--masks", "large", "--iters", "two", "--inception", "{file}", "--out",
                            "{tmp}/r.json"], "iters", "{tmp}/r.json"),
    "convert_inception_missing_file": (["-m", "psm_jax.evaluators.convert_inception", "{tmp}/none.pth",
                                        "{tmp}/o.npz"], "none.pth", "{tmp}/o.npz"),
    "convert_inception_not_a_checkpoint": (["-m", "psm_jax.evaluators.convert_inception", "{file}",
                                            "{tmp}/o.npz"], "not a PyTorch checkpoint", "{tmp}/o.npz"),
    "evaluate_inception_not_npz": (["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--images", "{corrupt}",
                                    "--masks", "large", "--inception", "{file}", "--out", "{tmp}/r.json"],
                                   "--inception", "{tmp}/r.json"),
    "evaluate_inception_pickled_npz": (["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--images",
                                        "{corrupt}", "--masks", "large", "--inception", "{objnpz}", "--out",
                                        "{tmp}/r.json"], "objects.npz", "{tmp}/r.json"),
    "evaluate_lpips_not_npz": (["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--images", "{corrupt}",
                                "--masks", "large", "--inception", "{objnpz}", "--lpips", "{file}", "--out",
                                "{tmp}/r.json"], "objects.npz", "{tmp}/r.json"),
    "evaluate_out_is_a_folder": (["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--images", "{corrupt}",
                                  "--masks", "large", "--inception", "{file}", "--out", "{empty}.json"],
                                 "is a folder", None),
    "evaluate_unpaired_masks": (["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--images", "{images}",
                                 "--masks", "{corrupt}", "--inception", "{file}", "--out", "{tmp}/r.json"],
                                "--masks", "{tmp}/r.json"),
    # ---- bench scripts take flags the same way
    "bench_bad_batch_size": (["bench/augment.py", "--batch_size", "0"], "--batch_size", None),
    "convert_lpips_bad_backbone": (["-m", "psm_jax.evaluators.convert_lpips", "--backbone", "{file}",
                                    "--linear", "{tmp}/none.pth", "{tmp}/o.npz"], "--backbone", "{tmp}/o.npz"),
    "convert_lpips_missing_linear": (["-m", "psm_jax.evaluators.convert_lpips", "--backbone", "{tmp}/none.pth",
                                      "--linear", "{file}", "{tmp}/o.npz"], "none.pth", "{tmp}/o.npz"),
}


# Orbax's commit metadata of a finished step, so the damaged step below is listed as one.
_CHECKPOINT_METADATA = {"item_handlers": {
    "meta": "orbax.checkpoint._src.handlers.json_checkpoint_handler.JsonCheckpointHandler",
    "state": "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"},
    "metrics": {}, "performance_metrics": {}, "init_timestamp_nsecs": 1, "commit_timestamp_nsecs": 2,
    "custom_metadata": {}}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "empty").mkdir()
    (root / "empty.json").mkdir()
    corrupt = root / "corrupt"
    corrupt.mkdir()
    for i in range(3):
        (corrupt / f"img{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (root / "file").write_text("an ordinary file\n")
    (root / "badconfig.py").write_text("raise RuntimeError('boom')\n")
    (root / "sweeps.py").write_text(
        "RUNS = {'up': ['../escape'], 'abs': ['/tmp/psm_abs_escape'], 'twice': ['a', 'a']}\n"
        "def get_sweep(name):\n"
        "    return [dict(name=n, arg='tiny', overrides={}, paper={}) for n in RUNS[name]]\n")
    (root / "typo.py").write_text(
        "from psm_jax.config_lib import base_config\n"
        "def get_config(arg=None):\n"
        "    return base_config()\n"
        "def get_sweep(name):\n"
        "    return [dict(name='a', arg='x', overrides={'optim.lrr': 1.0}, paper={})]\n")
    for d in ("images", "masks"):
        (root / d).mkdir()
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(root / "images" / "a.png")
    known = np.full((40, 56), 255, np.uint8)
    known[10:20, 10:30] = 0
    Image.fromarray(known).save(root / "masks" / "a.png")
    (root / "shell" / "checkpoints").mkdir(parents=True)
    # A finished step whose files are garbage (a disk fault, a truncated copy).
    step = root / "damaged" / "checkpoints" / "3"
    for item in ("meta", "state"):
        (step / item).mkdir(parents=True)
    (step / "_CHECKPOINT_METADATA").write_text(json.dumps(_CHECKPOINT_METADATA))
    (step / "commit_success.txt").write_text("Checkpoint commit was successful\n")
    (step / "meta" / "metadata").write_bytes(b"\xb3\x9d garbage \xff" * 8)
    (step / "state" / "_METADATA").write_bytes(b"\xb3\x9d garbage \xff" * 8)
    np.savez(root / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    (root / "sweepdir").mkdir()
    (root / "sweepdir" / "sweep.json").write_text(json.dumps({"sweep": "s", "config": "c", "runs": []}))
    return root


def _fmt(text: str, places: Path, tmp: Path) -> str:
    return text.format(tmp=tmp, empty=places / "empty", corrupt=places / "corrupt", file=places / "file",
                       badconfig=places / "badconfig.py", sweeps=places / "sweeps.py", typo=places / "typo.py",
                       images=places / "images", masks=places / "masks", shell=places / "shell",
                       damaged=places / "damaged", objnpz=places / "objects.npz", sweepdir=places / "sweepdir")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, places, tmp_path):
    args, must_contain, output = CASES[name]
    argv = [sys.executable, *(_fmt(a, places, tmp_path) for a in args)]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PSM_DEBUG=""))
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}: {err[-2000:]}"
    assert "Traceback" not in r.stderr, err[-3000:]
    # One line and nothing else: no warning, skip notice or progress bar before it.
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err[-2000:]
    assert _fmt(must_contain, places, tmp_path) in err, err
    # Users act on the words: no internal class names, and never advice to unpickle a file.
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", err), err
    assert "allow_pickle" not in err, err
    if output is not None:
        pattern = _fmt(output, places, tmp_path)
        written = sorted(Path("/").glob(pattern.lstrip("/"))) if "*" in pattern else (
            [pattern] if Path(pattern).exists() else [])
        assert not written, f"{written} was written"


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


# ==== python -m psm_jax.serve (issue 23) =================================================================

# Kept in one block (and run by its own test) so it merges cleanly with other edits of CASES above.
SERVE = ["-m", "psm_jax.serve"]
SERVE_CASES = {
    "serve_no_source": ([*SERVE], "--workdir --artifact is required", None),
    "serve_both_sources": ([*SERVE, "--workdir", "{empty}", "--artifact", "{file}"], "--artifact", None),
    "serve_missing_workdir": ([*SERVE, "--workdir", "{tmp}/none"], "{tmp}/none: does not exist", None),
    "serve_workdir_not_a_run": ([*SERVE, "--workdir", "{empty}"], "no checkpoints/ folder", None),
    "serve_missing_artifact": ([*SERVE, "--artifact", "{tmp}/none.jaxexport"], "none.jaxexport", None),
    "serve_artifact_without_sidecar": ([*SERVE, "--artifact", "{file}"], "file.json: sidecar not found", None),
    "serve_port_out_of_range": ([*SERVE, "--workdir", "{empty}", "--port", "70000"], "--port", None),
    "serve_port_not_a_number": ([*SERVE, "--workdir", "{empty}", "--port", "http"], "--port", None),
    "serve_zero_upload_cap": ([*SERVE, "--workdir", "{empty}", "--max_upload_bytes", "0"], "--max_upload_bytes",
                              None),
    "serve_zero_pixel_cap": ([*SERVE, "--workdir", "{empty}", "--max_pixels", "-5"], "--max_pixels", None),
    "serve_zero_queue": ([*SERVE, "--workdir", "{empty}", "--max_queue", "0"], "--max_queue", None),
    "serve_negative_examples": ([*SERVE, "--workdir", "{empty}", "--examples", "-1"], "--examples", None),
    "serve_step_with_artifact": ([*SERVE, "--artifact", "{file}", "--step", "3"], "--step", None),
    "serve_bad_host": ([*SERVE, "--workdir", "{empty}", "--host", "no such host!"], "--host", None),
}


@pytest.mark.parametrize("name", sorted(SERVE_CASES))
def test_serve_bad_input_is_one_line_and_exit_2(name, places, tmp_path, monkeypatch):
    monkeypatch.setitem(CASES, name, SERVE_CASES[name])
    test_bad_input_is_one_line_and_exit_2(name, places, tmp_path)


def test_serve_port_in_use_is_one_line_and_exit_2(places, tmp_path, monkeypatch):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        monkeypatch.setitem(CASES, "serve_port_in_use", ([*SERVE, "--workdir", "{empty}", "--port", port],
                                                         f"--port {port}: cannot listen", None))
        test_bad_input_is_one_line_and_exit_2("serve_port_in_use", places, tmp_path)
# ==== end of the psm_jax.serve block ============================================================================
# ==== issue 25 (pod planning): `python -m psm_jax.models.summary --mesh` =====================
# Kept in its own block (other changes to this file go above it). The cases join CASES, so the
# count above includes them, and run through the same check.
MESH_CASES = {
    "summary_mesh_unknown_axis": (["-m", "psm_jax.models.summary", "--config", "configs/psm.py:tiny", "--mesh",
                                   "data=2,dp=2"], "--mesh", None),
    "summary_mesh_zero_devices": (["-m", "psm_jax.models.summary", "--config", "configs/psm.py:tiny", "--mesh",
                                   "data=0"], "--mesh", None),
    "summary_mesh_not_a_number": (["-m", "psm_jax.models.summary", "--config", "configs/psm.py:tiny", "--mesh",
                                   "data=four"], "--mesh", None),
    "summary_mesh_batch_does_not_split": (["-m", "psm_jax.models.summary", "--config", "configs/psm.py:tiny",
                                           "--mesh", "data=3"], "batch_size=4", None),
    "summary_mesh_without_config": (["-m", "psm_jax.models.summary", "--variant", "paper512", "--mesh", "data=2"],
                                    "--config", None),
}
CASES.update(MESH_CASES)


@pytest.mark.parametrize("name", sorted(MESH_CASES))
def test_summary_mesh_bad_input(name, places, tmp_path):
    test_bad_input_is_one_line_and_exit_2(name, places, tmp_path)


# ==== issue 27 (the reproducibility study): evaluate --images from_config, repro sweeps, study collect ====
# Kept in its own block (other changes to this file go above it); the cases join CASES.
REPRO_EVAL = ["-m", "psm_jax.evaluate", "--workdir", "{damaged}", "--iters", "1,2", "--out", "{tmp}/r.json"]
REPRO_CASES = {
    "repro_evaluate_from_config_mask_folder": ([*REPRO_EVAL, "--images", "from_config", "--masks", "{masks}"],
                                               "with --images from_config, expected large or small", "{tmp}/r.json"),
    "repro_evaluate_negative_calib_samples": ([*REPRO_EVAL, "--images", "from_config", "--masks", "large",
                                              "--calib_samples", "-1"], "--calib_samples -1", "{tmp}/r.json"),
    "repro_evaluate_negative_save_images": ([*REPRO_EVAL, "--images", "from_config", "--masks", "large",
                                            "--save_images", "-3"], "--save_images -3", "{tmp}/r.json"),
    "repro_evaluate_images_not_a_folder": ([*REPRO_EVAL, "--images", "{tmp}/none", "--masks", "large"],
                                           "--images {tmp}/none: not a folder", "{tmp}/r.json"),
    "repro_sweep_unknown": (["-m", "launch.sweep", "configs/demo.py:repro9", "--dry_run"], "repro9", None),
    "repro_sweep_zero_seeds": (["-m", "launch.sweep", "configs/demo.py:repro,seeds=0", "--dry_run"], "seeds=0",
                               None),
    "repro_sweep_unknown_argument": (["-m", "launch.sweep", "configs/demo.py:repro,seedz=3", "--dry_run"], "seedz",
                                     None),
    "repro_main_unknown_ablation": ([*MAIN, "--config=configs/demo.py:demo,ablation=Z", "--workdir={tmp}/w"],
                                    "ablation='Z'", "{tmp}/w"),
}
CASES.update(REPRO_CASES)


@pytest.mark.parametrize("name", sorted(REPRO_CASES))
def test_repro_bad_input(name, places, tmp_path):
    test_bad_input_is_one_line_and_exit_2(name, places, tmp_path)


@pytest.mark.parametrize("out, message", [("doc/R.md", "no evaluation of the study has results.json"),
                                          ("doc/R.txt", "expected a .md file")])
def test_repro_collect_bad_input(out, message, places, tmp_path, monkeypatch):
    """A study sweep (runs with ``study``) whose evaluation has not run, or an --out that is not Markdown."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "sweep.json").write_text(json.dumps({"sweep": "repro", "config": "configs/demo.py", "runs": [
        {"name": "A_s0_eval", "workdir": "runs/repro/A_s0_eval", "kind": "evaluate", "paper": {"fid": 2.36},
         "study": {"model": "A", "seed": 0}}]}))
    monkeypatch.setitem(CASES, "repro_collect", (["-m", "launch.collect", str(study), "--out", f"{{tmp}}/{out}"],
                                                 message, "{tmp}/doc"))
    test_bad_input_is_one_line_and_exit_2("repro_collect", places, tmp_path)
# ==== end of the issue 27 block ===============================================================================
