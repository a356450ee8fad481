"""Tests for psm_jax.data.transforms (decode, train crop/flip, eval centre crop; paper Sec. 4.1)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from psm_jax.data import transforms as T


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=6, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- decode --------------------------------------------------------------------------------------

def test_decode_rgb_roundtrip():
    x = _rgb()
    np.testing.assert_array_equal(T.decode_image(_encode(Image.fromarray(x))), x)


def test_decode_grayscale_palette_rgba_become_rgb():
    g = _rgb()[..., 0]
    out = T.decode_image(_encode(Image.fromarray(g, "L")))
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)

    rgba = np.concatenate([_rgb(), np.full((6, 5, 1), 7, np.uint8)], -1)
    out = T.decode_image(_encode(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out, rgba[..., :3])  # alpha dropped, colour kept

    pal = Image.fromarray(_rgb()).quantize(colors=8)
    out = T.decode_image(_encode(pal))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))

    pal_t = Image.fromarray(_rgb()).quantize(colors=8)
    pal_t.info["transparency"] = 0
    assert T.decode_image(_encode(pal_t, transparency=0)).shape == (6, 5, 3)


def test_decode_16bit_grayscale_is_rescaled_not_clipped():
    a = np.array([[0, 32768, 65535]], np.uint16)
    out = T.decode_image(_encode(Image.fromarray(a)))  # mode I;16
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_decode_respects_exif_orientation():
    x = _rgb(4, 8)
    img = Image.fromarray(x)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = T.decode_image(_encode(img, "PNG", exif=exif))
    assert out.shape == (8, 4, 3)
    np.testing.assert_array_equal(out, np.rot90(x, k=-1))


@pytest.mark.parametrize("data", [b"", b"definitely not an image", None])
def test_decode_garbage_returns_none(data, caplog):
    with caplog.at_level(logging.WARNING):
        assert T.decode_image(data, "bad.png") is None
    if data is not None:
        assert "bad.png" in caplog.text


def test_decode_truncated_file_returns_none():
    good = _encode(Image.fromarray(_rgb(64, 64)), "JPEG")
    assert T.decode_image(good) is not None
    assert T.decode_image(good[: len(good) // 2], "cut.jpg") is None


def test_to_uint8_rgb_from_arrays():
    g = _rgb()[..., 0]
    assert T.to_uint8_rgb(g).shape == (6, 5, 3)
    assert T.to_uint8_rgb(g[..., None]).shape == (6, 5, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert T.to_uint8_rgb(rgba).shape == (2, 2, 3)


# -- geometry ------------------------------------------------------------------------------------

def _is_window_of(crop: np.ndarray, img: np.ndarray) -> bool:
    s = crop.shape[0]
    return any(np.array_equal(crop, img[y:y + s, x:x + s])
               for y in range(img.shape[0] - s + 1) for x in range(img.shape[1] - s + 1))


def test_random_crop_flip_is_a_crop_of_the_image_or_its_mirror_and_flips_half_the_time():
    x = _rgb(12, 10)
    flips = 0
    for i in range(40):
        c = T.random_crop_flip(x, 8, np.random.default_rng(i))
        assert c.shape == (8, 8, 3) and c.flags.c_contiguous
        plain, mirrored = _is_window_of(c, x), _is_window_of(c, x[:, ::-1])
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 <= flips <= 30


def test_random_crop_is_deterministic_given_rng():
    x = _rgb(30, 30)
    a = T.random_crop_flip(x, 16, np.random.default_rng(5))
    b = T.random_crop_flip(x, 16, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_small_image_is_reflect_padded_for_training():
    x = _rgb(5, 7)
    c = T.random_crop_flip(x, 16, np.random.default_rng(0))
    assert c.shape == (16, 16, 3)
    # Every output pixel is an input pixel (reflection, no constant fill).
    colours = {tuple(p) for p in x.reshape(-1, 3)}
    assert all(tuple(p) in colours for p in c.reshape(-1, 3))


def test_random_pad_offset_varies_but_eval_pad_is_symmetric():
    x = _rgb(4, 4)
    tops = {T.pad_to_min_size(x, 8, np.random.default_rng(i))[0, 0].tobytes() for i in range(20)}
    assert len(tops) > 1
    e = T.pad_to_min_size(x, 8)
    np.testing.assert_array_equal(e, np.pad(x, ((2, 2), (2, 2), (0, 0)), mode="reflect"))


def test_one_pixel_image_pads_by_repetition():
    x = np.array([[[1, 2, 3]]], np.uint8)
    assert (T.center_crop(x, 4) == x).all()
    assert T.random_crop_flip(x, 4, np.random.default_rng(0)).shape == (4, 4, 3)


def test_center_crop_takes_the_centre():
    x = _rgb(10, 14)
    np.testing.assert_array_equal(T.center_crop(x, 6), x[2:8, 4:10])
    # Small on one side only: that side is padded, the other cropped.
    y = _rgb(4, 12)
    c = T.center_crop(y, 8)
    np.testing.assert_array_equal(c, np.pad(y, ((2, 2), (0, 0), (0, 0)), mode="reflect")[:, 2:10])


def test_model_range():
    out = T.to_model_range(np.array([0, 255, 127], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)


def test_resize_short_side():
    x = _rgb(40, 80)
    assert T.resize_short_side(x, 20).shape == (20, 40, 3)
    assert T.resize_short_side(x, 0) is x


# -- grain transforms ----------------------------------------------------------------------------

def _ones_mask(rng, res, kind):
    m = np.ones((res, res), np.float32)
    m[: res // 2] = 0
    return m


def test_decode_transform_marks_corrupt_records():
    d = T.Decode()
    ok = d.map({"raw": _encode(Image.fromarray(_rgb())), "name": "a.png", "index": 3})
    assert ok["image"].shape == (6, 5, 3) and int(ok["index"]) == 3
    bad = d.map({"raw": b"xx", "name": "b.png", "index": 4})
    assert bad == {"index": 4, T.CORRUPT: "b.png", T.CORRUPT_REASON: "cannot identify image file"}
    arr = d.map({"raw": _rgb(), "name": "0", "index": 0})  # synthetic: already decoded
    assert arr["image"].shape == (6, 5, 3)


def test_train_augment_output_and_corrupt_passthrough():
    aug = T.TrainAugment(8, _ones_mask, "large")
    out = aug.random_map({"image": _rgb(12, 12), "index": np.int64(1)}, np.random.default_rng(0))
    assert out["image"].shape == (8, 8, 3) and out["image"].dtype == np.float32
    assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["mask"].shape == (8, 8, 1) and out["mask"].dtype == np.float32
    assert out["mask"][:4].max() == 0 and out["mask"][4:].min() == 1
    marker = {"index": 2, T.CORRUPT: "x"}
    assert aug.random_map(marker, np.random.default_rng(0)) is marker


def test_eval_transform_checks_mask_shape():
    et = T.EvalTransform(8, lambda i: np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="eval mask for record 5"):
        et.map({"image": _rgb(8, 8), "index": np.int64(5)})
