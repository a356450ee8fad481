"""psm_jax.serve: the page's API in process (Starlette's TestClient), on a tiny random-weight workdir (issue 23).

Every model request here uses the training resolution and T = 2, so the whole module compiles the spread
twice: once with the trajectory (the server always runs with it) and once without (the reference
``Inpainter`` call). Bad input never reaches the model.
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infer_fixture as fx  # noqa: E402
import serve_fixture as sf  # noqa: E402

from psm_jax import export, serving  # noqa: E402
from psm_jax.data.digits import DigitsSource  # noqa: E402
from psm_jax.inpaint import Inpainter, padded_size  # noqa: E402
from psm_jax.serve import Limits, create_app, from_artifact  # noqa: E402
from psm_jax.serve.model import Result  # noqa: E402

R = fx.RESOLUTION
LIMITS = Limits(max_upload_bytes=100_000, max_pixels=64 * 64, max_samples=3)
SEED = 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return fx.make_workdir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def backend(workdir):
    return sf.digits_backend(workdir)


@pytest.fixture(scope="module")
def client(backend):
    with TestClient(create_app(backend, limits=LIMITS, examples=20)) as c:
        yield c


@pytest.fixture(scope="module")
def digit():
    return DigitsSource(1500, 1797, R)[0]["raw"]


def _post(client, image: bytes, mask: bytes, **fields):
    return client.post("/api/inpaint", files={"image": ("x.png", image, "image/png"),
                                              "mask": ("m.png", mask, "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def _assert_one_line_error(r, status: int, text: str = ""):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    assert text in msg, msg


# ------------------------------------------------------------------------------------------------ happy paths


def test_page_and_its_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<canvas id="mask-canvas"' in r.text and "/app.js" in r.text
    assert "http" not in r.text.replace("http-equiv", "")          # nothing from a CDN
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 100


def test_info(client, workdir):
    info = client.get("/api/info").json()
    assert info["resolution"] == R and info["default_iters"] == fx.ITERS and info["step"] == 3
    assert info["kind"] == "workdir" and info["name"] == workdir.name and info["iters_range"] == [1, 8]
    assert info["strategies"] == ["pad", "resize", "crop"] and info["trajectory"] == ["mask", "mean", "sigma"]
    assert info["max_samples"] == 3 and info["max_pixels"] == 64 * 64 and info["examples"] == 20


def test_examples_are_the_held_out_digits_by_index(client, digit):
    assert client.get("/api/examples").json()["count"] == 20
    r = client.get("/api/examples/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(sf.decode(r.content), digit)
    assert not np.array_equal(sf.decode(client.get("/api/examples/1").content), digit)
    _assert_one_line_error(client.get("/api/examples/20"), 404, "out of range")
    for path in ("/api/examples/-1", "/api/examples/abc", "/api/examples/..%2f..%2fetc%2fpasswd",
                 "/api/examples/%2e%2e/%2e%2e/etc/passwd", "/static/../../README.md"):
        _assert_one_line_error(client.get(path), 404)


@pytest.mark.slow
def test_png_equals_inpainter_and_only_the_hole_changes(client, workdir, digit):
    hole = sf.box_hole(R, R)
    r = _post(client, sf.png(digit), sf.hole_png(hole), seed=SEED)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    out = sf.decode(r.content)
    reference = Inpainter.from_workdir(workdir)(digit, hole, mask_is_hole=True, seed=SEED)
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_array_equal(out[~hole], digit[~hole])
    assert (out[hole] != digit[hole]).any()
    # Any size goes through Inpainter's strategies: a 48x40 image, shrunk to R, padded to 32 (one compiled shape).
    big = fx.random_image(np.random.default_rng(1), 48, 40)
    hole2 = sf.box_hole(48, 40)
    r = _post(client, sf.png(big), sf.hole_png(hole2), seed=SEED, strategy="resize")
    out2 = sf.decode(r.content)
    np.testing.assert_array_equal(out2, Inpainter.from_workdir(workdir)(big, ~hole2, seed=SEED, strategy="resize"))
    np.testing.assert_array_equal(out2[~hole2], big[~hole2])


@pytest.mark.slow
def test_json_trajectory_samples_and_compile_cache(client, workdir, digit):
    hole = sf.box_hole(R, R)
    r = _post(client, sf.png(digit), sf.hole_png(hole), seed=SEED, samples=2, trajectory=1, iters=fx.ITERS)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text[:300]
    body = r.json()
    assert (body["width"], body["height"], body["iters"], body["seed"], body["samples"]) == (R, R, 2, SEED, 2)
    outs = [sf.decode(base64.b64decode(b)) for b in body["outputs"]]
    reference = Inpainter.from_workdir(workdir)(digit, hole, mask_is_hole=True, seed=SEED, num_samples=2)
    np.testing.assert_array_equal(np.stack(outs), reference)
    assert not np.array_equal(outs[0], outs[1])                   # sample 1 has its own noise
    traj = body["trajectory"]
    assert traj["fields"] == ["mask", "mean", "sigma"] and traj["work_size"] == [R, R] and traj["sigma_max"] > 0
    assert Image.open(io.BytesIO(base64.b64decode(traj["colorbar"]))).height > 100
    for sample in traj["samples"]:
        masks = [sf.decode(base64.b64decode(b))[..., 0] for b in sample["mask"]]
        assert len(masks) == fx.ITERS and all(m.shape == (R, R) for m in masks)
        # m_1 commits part of the hole, m_T all of it; known pixels are committed from the start.
        assert (masks[0][~hole] == 255).all() and (masks[0][hole] == 0).any() and (masks[0][hole] == 255).any()
        assert (masks[-1] == 255).all()
        for key in ("mean", "sigma"):
            assert [sf.decode(base64.b64decode(b)).shape for b in sample[key]] == [(R, R, 3)] * fx.ITERS
    # Several seeds and samples, PNG and JSON, one compiled spread for the one padded shape.
    _post(client, sf.png(digit), sf.hole_png(hole), seed=SEED + 1)
    compiled = client.get("/api/info").json()["compiled"]
    P = padded_size(R)   # 32: the network's input is a multiple of 32
    assert compiled == [[fx.ITERS, True, 1, P, P]], compiled


# ------------------------------------------------------------------------------------------------ bad input


def _bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (a decompression bomb); its pixels are never read."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_cases(digit):
    ok_img, hole = sf.png(digit), sf.hole_png(sf.box_hole(R, R))
    full = sf.png(fx.random_image(np.random.default_rng(0), R, R))
    jpeg = io.BytesIO()
    Image.fromarray(digit).save(jpeg, format="JPEG")
    gif = io.BytesIO()
    Image.fromarray(digit).save(gif, format="GIF")
    big = sf.png(fx.random_image(np.random.default_rng(0), 80, 80))   # 6400 pixels > 64 * 64
    post = lambda image=ok_img, mask=hole, **f: lambda c: _post(c, image, mask, **f)  # noqa: E731
    return {
        "not_an_image": (post(image=b"hello, this is text"), 400, "image: not an image"),
        "truncated_png": (post(image=full[: len(full) // 2]), 400, "image: truncated or corrupt PNG"),
        "gif_image": (post(image=gif.getvalue()), 400, "image: expected PNG or JPEG, got GIF"),
        "jpeg_mask": (post(mask=jpeg.getvalue()), 400, "mask: expected PNG"),
        "empty_image": (post(image=b""), 400, "image: empty file"),
        "mask_other_size": (post(mask=sf.hole_png(sf.box_hole(R, R + 8))), 400, f"mask: is {R + 8}x{R}"),
        "mask_no_hole": (post(mask=sf.hole_png(np.zeros((R, R), bool))), 400, "mask: has no hole"),
        "mask_all_hole": (post(mask=sf.hole_png(np.ones((R, R), bool))), 400, "mask: is all hole"),
        "iters_zero": (post(iters=0), 400, "iters: must be in [1, 8], got 0"),
        "iters_nine": (post(iters=9), 400, "iters: must be in [1, 8], got 9"),
        "iters_text": (post(iters="two"), 400, "iters: expected an integer"),
        "iters_huge_number": (post(iters="9" * 5000), 400, "iters: expected an integer"),
        "seed_negative": (post(seed=-1), 400, "seed: must be in [0, 4294967295]"),
        "seed_too_big": (post(seed=2**32), 400, "seed: must be in"),
        "samples_zero": (post(samples=0), 400, "samples: must be in [1, 3]"),
        "samples_too_many": (post(samples=4), 400, "samples: must be in [1, 3]"),
        "strategy_unknown": (post(strategy="tile"), 400, "strategy: expected one of pad, resize, crop"),
        "trajectory_not_bool": (post(trajectory="maybe"), 400, "trajectory: expected 0 or 1"),
        "unknown_field": (post(path="/etc/passwd"), 400, "unknown field 'path'"),
        "too_many_pixels": (post(image=big, mask=sf.hole_png(sf.box_hole(80, 80))), 413, "at most 4096"),
        "decompression_bomb": (post(image=_bomb_png()), 413, "image:"),
        "upload_too_large": (post(image=b"\0" * 150_000), 413, "at most 100000"),
        "missing_mask": (lambda c: c.post("/api/inpaint", files={"image": ("x.png", ok_img, "image/png")}), 400,
                         "mask: missing"),
        "missing_image": (lambda c: c.post("/api/inpaint", files={"mask": ("m.png", hole, "image/png")}), 400,
                          "image: missing"),
        "image_as_text": (lambda c: c.post("/api/inpaint", data={"image": "abc"},
                                           files={"mask": ("m.png", hole, "image/png")}), 400,
                          "image: expected a file upload"),
        "field_twice": (lambda c: c.post("/api/inpaint", data={"seed": ["1", "2"]},
                                         files={"image": ("x.png", ok_img, "image/png"),
                                                "mask": ("m.png", hole, "image/png")}), 400, "given twice"),
        "json_body": (lambda c: c.post("/api/inpaint", json={"image": "x"}), 400, "multipart/form-data"),
        "garbage_multipart": (lambda c: c.post("/api/inpaint", content=b"--x\r\nnonsense",
                                               headers={"content-type": "multipart/form-data; boundary=y"}), 400,
                              ""),
        "chunked_too_large": (lambda c: c.post("/api/inpaint", content=iter([b"\0" * 60_000] * 3),
                                               headers={"content-type": "multipart/form-data; boundary=y"}), 413,
                              "exceeds 100000"),
        "wrong_method": (lambda c: c.get("/api/inpaint"), 405, "method GET not allowed"),
        "unknown_path": (lambda c: c.get("/api/nothing"), 404, "no such path"),
    }


BAD_NAMES = sorted(_bad_cases(np.zeros((R, R, 3), np.uint8)))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_a_one_line_4xx_and_the_server_still_answers(client, digit, name):
    send, status, text = _bad_cases(digit)[name]
    _assert_one_line_error(send(client), status, text)
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/examples/0").status_code == 200


# ------------------------------------------------------------------------------------------------ the queue


class _SlowBackend:
    """Duck-typed backend whose inpaint blocks until released (no model)."""
    kind, name, resolution, default_iters, iters_range = "fake", "fake", R, 2, (1, 8)
    config = ml_collections.ConfigDict({"model": {"resolution": R}})

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def info(self):
        return {"name": self.name, "kind": self.kind, "strategies": ["pad"], "resolution": R}

    def inpaint(self, image, known, **kw):
        self.started.set()
        assert self.release.wait(30)
        return Result([image], None, ())


def test_a_full_queue_answers_503_and_the_server_recovers(digit):
    fake = _SlowBackend()
    img, hole = sf.png(digit), sf.hole_png(sf.box_hole(R, R))
    with TestClient(create_app(fake, max_queue=1, examples=0)) as c:
        answers: list = []
        first = threading.Thread(target=lambda: answers.append(_post(c, img, hole)))
        first.start()
        assert fake.started.wait(30)                     # the worker is busy with request 1
        second = threading.Thread(target=lambda: answers.append(_post(c, img, hole)))
        second.start()
        deadline = time.monotonic() + 30
        while c.app.state.worker.pending < 1 and time.monotonic() < deadline:   # request 2 waits in the queue
            time.sleep(0.01)
        r = _post(c, img, hole)
        _assert_one_line_error(r, 503, "server busy")
        assert r.headers["retry-after"]
        fake.release.set()
        first.join(30)
        second.join(30)
        assert [a.status_code for a in answers] == [200, 200]
        assert _post(c, img, hole).status_code == 200


# ------------------------------------------------------------------------------------------------ artifacts


@pytest.mark.slow
def test_an_exported_artifact_serves_the_same_spread(workdir, tmp_path, digit):
    path = tmp_path / "psm.jaxexport"
    assert export.main(["--workdir", str(workdir), "--out", str(path), "--with_trajectory"]) == 0
    backend = from_artifact(path)
    hole = sf.box_hole(R, R)
    with TestClient(create_app(backend, examples=0)) as c:
        info = c.get("/api/info").json()
        assert (info["kind"], info["iters_range"], info["trajectory"], info["step"]) == (
            "artifact", [fx.ITERS, fx.ITERS], ["sigma"], 3)
        r = _post(c, sf.png(digit), sf.hole_png(hole), seed=SEED)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        out = sf.decode(r.content)
        np.testing.assert_array_equal(out[~hole], digit[~hole])
        # The artifact and the in-process spread agree up to a rounding flip of float noise (tests/test_serving).
        direct = serving.load(path).inpaint_uint8(digit, ~hole, seed=SEED)
        reference = Inpainter.from_workdir(workdir)(digit, hole, mask_is_hole=True, seed=SEED)
        for other in (direct, reference):
            assert np.abs(out.astype(int) - other).max() <= 1
        assert (out[hole] != digit[hole]).any()
        body = _post(c, sf.png(digit), sf.hole_png(hole), seed=SEED, trajectory=1).json()
        traj = body["trajectory"]
        assert traj["fields"] == ["sigma"] and list(traj["samples"][0]) == ["sigma"]
        assert len(traj["samples"][0]["sigma"]) == fx.ITERS and traj["sigma_max"] > 0
        _assert_one_line_error(_post(c, sf.png(digit), sf.hole_png(hole), iters=fx.ITERS + 1), 400,
                               f"this model runs T = {fx.ITERS} only")


# ------------------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_the_command_serves_and_bench_serve_reports_its_rows(workdir):
    """``python -m psm_jax.serve`` for real (uvicorn, printed URL, Ctrl-C) through bench/serve.py's smoke run."""
    r = subprocess.run([sys.executable, "bench/serve.py", "--workdir", str(workdir), "--repeats", "2",
                        "--concurrent", "4", "--big", "64", "--iters", str(fx.ITERS)],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["request"] for row in rows] == ["32px T=2 png", "32px T=2 json", "64px T=2 png", "4 concurrent 32px"]
    for row in rows[:3]:
        assert 0 < row["p50_s"] <= row["p95_s"]
    assert (rows[3]["ok"], rows[3]["failed"]) == (4, 0) and rows[3]["peak_rss_mib"] > 0
    assert "Traceback" not in r.stderr
