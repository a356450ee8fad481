"""Tests for psm_jax.perceptual: Eq. 9 over a frozen (dilated) ResNet, and its config rules."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from psm_jax import perceptual
from psm_jax.models import resnet

TINY = dict(stage_sizes=(1, 1, 1, 1), base_width=8)


def tiny_model():
    return resnet.ResNet(**TINY, replace_stride_with_dilation=(False, True, True))


def config(**loss):
    c = ml_collections.ConfigDict()
    c.loss = ml_collections.ConfigDict(dict(pcp_weight=2.0, perceptual_weights="", perceptual_random_init=False))
    c.loss.update(loss)
    return c


def images(seed, shape=(2, 32, 32, 3)):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def test_random_init_must_be_explicit():
    with pytest.raises(ValueError, match="perceptual_weights is empty.*perceptual_random_init=True"):
        perceptual.make_perceptual_fn(config())
    with pytest.raises(ValueError, match="contradict"):
        perceptual.make_perceptual_fn(config(perceptual_weights="w.npz", perceptual_random_init=True))


def test_random_init_logs_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="psm_jax.perceptual"):
        variables, fn = perceptual.make_perceptual_fn(config(perceptual_random_init=True), model=tiny_model())
    assert any("RANDOM weights" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert set(variables) == {"params", "batch_stats"}


def test_zero_for_identical_positive_otherwise():
    variables, fn = perceptual.make_perceptual_fn(config(perceptual_random_init=True), model=tiny_model())
    x, y = images(0), images(1)
    f = jax.jit(fn)
    assert float(f(variables, x, x)) == 0.0
    d = float(f(variables, x, y))
    assert d > 0 and np.isfinite(d)
    assert float(f(variables, x, y)) == pytest.approx(float(f(variables, y, x)), rel=1e-5)   # symmetric


def test_no_gradient_into_resnet_params_but_into_prediction():
    variables, fn = perceptual.make_perceptual_fn(config(perceptual_random_init=True), model=tiny_model())
    x, y = images(2), images(3)
    g_vars, g_x = jax.jit(jax.grad(fn, argnums=(0, 1)))(variables, x, y)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_vars))
    assert np.abs(np.asarray(g_x)).max() > 0


def test_eq9_mean_squared_difference_per_layer():
    model = tiny_model()
    variables = resnet.random_variables(1, **TINY)
    x, y = images(4), images(5)
    loss = perceptual.PerceptualLoss(model=model, layers=("layer1", "layer3"), layer_weights=(2.0, 0.5))
    apply = jax.jit(model.apply)
    fx = apply(variables, perceptual.imagenet_normalize(x))
    fy = apply(variables, perceptual.imagenet_normalize(y))
    want = (2.0 * np.mean((np.asarray(fx["layer1"]) - np.asarray(fy["layer1"])) ** 2)
            + 0.5 * np.mean((np.asarray(fx["layer3"]) - np.asarray(fy["layer3"])) ** 2))
    assert float(jax.jit(loss)(variables, x, y)) == pytest.approx(want, rel=1e-5)
    # ImageNet normalisation of [-1, 1] inputs: white (1) -> (1 - mean) / std
    np.testing.assert_allclose(perceptual.imagenet_normalize(jnp.ones((1, 1, 1, 3)))[0, 0, 0],
                               (1 - np.array(perceptual.IMAGENET_MEAN)) / np.array(perceptual.IMAGENET_STD),
                               rtol=1e-6)


def test_layer_config_validation():
    with pytest.raises(ValueError, match="perceptual_layers"):
        perceptual.make_perceptual_fn(config(perceptual_random_init=True, perceptual_layers=("layer5",)),
                                      model=tiny_model())
    with pytest.raises(ValueError, match="perceptual_layer_weights"):
        perceptual.PerceptualLoss(model=tiny_model(), layers=("layer1",), layer_weights=(1.0, 2.0))


def test_weights_from_npz_and_bad_path(tmp_path):
    variables = resnet.random_variables(7, **TINY)
    path = tmp_path / "resnet.npz"
    np.savez(path, **resnet.to_torchvision(variables))
    loaded, fn = perceptual.make_perceptual_fn(config(perceptual_weights=str(path)), model=tiny_model())
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    # accepts the loss section itself, as train.py passes it
    loaded2, _ = perceptual.make_perceptual_fn(config(perceptual_weights=str(path)).loss, model=tiny_model())
    assert jax.tree.structure(loaded2) == jax.tree.structure(loaded)
    with pytest.raises(ValueError, match="loss.perceptual_weights: .*not found.*missing.npz"):
        perceptual.make_perceptual_fn(config(perceptual_weights=str(tmp_path / "missing.npz")), model=tiny_model())
    with pytest.raises(ValueError, match="loss.perceptual_weights: .*missing keys"):
        perceptual.make_perceptual_fn(config(perceptual_weights=str(path)))      # file is not a ResNet-50


@pytest.mark.slow   # full ResNet-50: ~5 s to compile on 2 cores
def test_default_is_dilated_resnet50():
    variables, fn = perceptual.make_perceptual_fn(config(perceptual_random_init=True).loss)
    assert fn.model.replace_stride_with_dilation == (False, True, True)
    assert tuple(fn.model.stage_sizes) == resnet.RESNET50_STAGES and fn.layers == resnet.LAYER_NAMES
    x, y = images(8, (1, 32, 32, 3)), images(9, (1, 32, 32, 3))
    d = float(jax.jit(fn)(variables, x, y))
    assert d > 0 and np.isfinite(d)
