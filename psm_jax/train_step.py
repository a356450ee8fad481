"""One PSM training step: the generator and discriminator updates (paper Sec. 3.3, 4.2).

Design decisions where the paper is silent (each is a config field):

* **What D sees.** As in MAT, D sees the *composited* prediction (known pixels pasted back,
  ``m0 * x + (1 - m0) * pred``) together with the initial mask ``m0`` (``loss.composite_fakes``).
  Every spread iteration's prediction is shown to D, because Eq. 10 supervises every iteration,
  **one D call per iteration**: D's minibatch-std layer groups samples with a stride, so one call
  on the iteration-major stack of T x B fakes would put the same image at two iterations into
  one group (they share every known pixel); that group's std is lower than any real group's,
  and D could tell fakes from reals by batch structure alone.
* **What is supervised.** With decoupled probabilistic modelling (``spread.decoupled``, the
  paper's full model) the adversarial, perceptual and L1 terms see the mean ``mu_t`` and the NLL
  (Eq. 1) trains only the variance (``sg[mu]``). Model D of Table 1 (``decoupled=False``) drops
  the NLL and supervises the *sampled* result ``mu_t + sigma_t * z``, so the variance is trained
  only through the adversarial and perceptual losses.
* **Frozen spread** (``spread.resample_committed = False``, our option): iteration t is judged
  on the image it outputs, i.e. the pixels committed before it (data, no gradient) plus its own
  prediction elsewhere; its L1 and NLL (region "hole") cover only the pixels still open at its
  input. With Eq. 5 as written (the default) every iteration is judged on its mean over the
  whole initial hole.
* **Gradients between iterations** (``spread.grad_through_iters``, default off): the input of
  iteration t+1 is treated as data, so each iteration is supervised on its own.
* **D's fakes** (``loss.d_fresh_fakes``). As MAT's Dmain phase, D is updated on fakes that the
  *updated* G re-generates with fresh latents (one more forward spread per step). ``False``
  reuses the fakes of G's own step (a third fewer FLOPs; Adam's small step makes it close).
* **G's Adam** is rescaled for MAT's lazy-regularisation interval ``loss.g_reg_interval`` = 4
  (lr * 4/5, betas ** (4/5)) although MAT's path-length term is commented out: that is what
  MAT's G optimiser actually ran with.
* **R1** is lazy (every ``loss.r1_interval`` steps, scaled by the interval, with D's Adam lr and
  betas rescaled by interval/(interval+1)), computed on augmented reals, as StyleGAN2-ADA.
* **Mixed precision.** With ``compute_dtype=bfloat16`` G's and D's parameters and inputs are
  cast inside the loss functions (losses, the pick and R1 stay float32), so gradients,
  parameters and optimizer state stay float32. R1 is always float32: its double backprop
  through bf16 would be mostly rounding noise.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from psm_jax import augment as ada
from psm_jax import losses
from psm_jax.models.generator import make_apply_fn
from psm_jax.models.mapping import MappingNetwork
from psm_jax.spread import pixel_spread
from psm_jax.spread_config import spread_kwargs

State = dict[str, Any]


class Models(NamedTuple):
    generator: Any                     # flax module
    discriminator: Any                 # flax module
    perceptual_params: Any             # frozen ResNet-50 variables (or None)
    perceptual_fn: Callable | None     # fn(params, x, y) -> scalar


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_optimizers(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                                 optax.GradientTransformation]:
    o = config.optim
    g_lr, g_b1, g_b2 = o.lr * o.g_lr_mult, o.b1, o.b2
    if config.loss.g_reg_interval:
        g_lr, g_b1, g_b2 = losses.lazy_reg_adam_hparams(g_lr, g_b1, g_b2, config.loss.g_reg_interval)
    g_tx = optax.adam(g_lr, b1=g_b1, b2=g_b2, eps=o.eps)
    # D shares one Adam between its main and lazy-R1 steps; StyleGAN2 rescales both.
    lr, b1, b2 = losses.lazy_reg_adam_hparams(o.lr * o.d_lr_mult, o.b1, o.b2, config.loss.r1_interval)
    d_tx = optax.adam(lr, b1=b1, b2=b2, eps=o.eps)
    return g_tx, d_tx


def ema_beta(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
    """StyleGAN2's EMA decay per step: a half-life in kimg, with a ramp-up early in training."""
    batch = config.batch_size
    ema_nimg = config.ema.kimg * 1000.0
    if config.ema.rampup:
        ema_nimg = jnp.minimum(ema_nimg, (step + 1).astype(jnp.float32) * batch * config.ema.rampup)
    return 0.5 ** (batch / jnp.maximum(ema_nimg, 1e-8))


def generator_apply_fn(models: Models, variables: Any, *, noise_mode: str = "random",
                       style_mixing_prob: float = 0.0) -> Callable:
    """The ``apply_fn(x, m0, m, u, t_frac, key)`` that :func:`pixel_spread` expects."""
    return make_apply_fn(models.generator, variables, noise_mode=noise_mode,
                         style_mixing_prob=style_mixing_prob)


def update_w_avg(models: Models, g_params: Any, g_buffers: Any, key: jax.Array,
                 batch: int) -> Any:
    """Tracks the mapping network's ``w_avg`` (StyleGAN2, beta 0.995) on a fresh z batch.

    Inside the spread the generator runs statelessly (a ``lax.scan`` body), so the
    train-mode statistic is updated here with the mapping network alone; it is only used
    for truncation at inference time.
    """
    if "mapping" not in g_buffers.get("buffers", {}):
        return g_buffers
    G = models.generator
    mapping = MappingNetwork(G.z_dim, G.w_dim, G.num_ws, num_layers=G.mapping_layers)
    z = jax.random.normal(key, (batch, G.z_dim))
    _, updated = mapping.apply({"params": g_params["mapping"],
                                "buffers": g_buffers["buffers"]["mapping"]},
                               z, update_w_avg=True, mutable=["buffers"])
    buffers = dict(g_buffers["buffers"], mapping=updated["buffers"])
    return dict(g_buffers, buffers=buffers)


def _d_logits(models: Models, d_params: Any, images: jax.Array, masks: jax.Array,
              dtype: str = "float32") -> jax.Array:
    """D's logits [N] in float32, computed in ``dtype`` (params and inputs cast inside)."""
    dt = jnp.dtype(dtype)
    logits = models.discriminator.apply({"params": _cast(d_params, dt)}, images.astype(dt),
                                        masks.astype(dt))
    return logits.reshape(-1).astype(jnp.float32)


def d_logits_per_iteration(models: Models, d_params: Any, images_TBHWC: jax.Array,
                           masks_TBHW1: jax.Array, dtype: str = "float32") -> jax.Array:
    """D's logits [T, B] with one D call per spread iteration (see the module docstring:
    minibatch-std groups must never mix two iterations of the same image)."""
    return jnp.stack([_d_logits(models, d_params, images_TBHWC[t], masks_TBHW1[t], dtype)
                      for t in range(images_TBHWC.shape[0])])


def _augment(config, key, images, masks, p):
    if not config.ada.enabled:
        return images, masks
    return ada.augment(key, images, masks, p, config.ada)


def _spread_fakes(g_params, state, batch, key, *, config, models):
    """Runs the training spread and returns what the losses need (all float32, [T, B, ...]).

    ``pred``: what is supervised (the mean, or the sample for model D), with the frozen-spread
    bookkeeping applied; ``fake``: the image D and the perceptual loss see; ``m_in``: the mask at
    each iteration's input (the L1/NLL regions); ``mean``, ``log_var``: the raw heads.
    """
    dt = jnp.dtype(config.compute_dtype)
    real, m0 = batch["image"], batch["mask"]
    k_spread, k_sample = jax.random.split(key)
    variables = {"params": _cast(g_params, dt), **state["g_buffers"]}
    sp = config.spread
    apply_fn = generator_apply_fn(models, variables, style_mixing_prob=config.loss.style_mixing_prob)
    out = pixel_spread(apply_fn, real.astype(dt), m0.astype(dt), k_spread, num_iters=sp.train_iters,
                       return_trajectory=True, remat=sp.remat, stop_grad_between_iters=not sp.grad_through_iters,
                       unroll=True if sp.unroll_train else 1, **spread_kwargs(config))
    traj = jax.tree.map(lambda a: a.astype(jnp.float32), out["trajectory"])
    mean_TBHWC, log_var_TBHWC = traj["mean"], traj["log_var"]
    T = mean_TBHWC.shape[0]
    if sp.decoupled:
        pred_TBHWC = mean_TBHWC
    else:  # model D: supervise the sample; the variance gets gradients through it
        z = jax.random.normal(k_sample, mean_TBHWC.shape)
        pred_TBHWC = mean_TBHWC + jnp.exp(0.5 * log_var_TBHWC) * z
    if sp.resample_committed:
        m_in_TBHW1 = jnp.broadcast_to(m0[None], (T,) + m0.shape)
    else:
        # Frozen spread: iteration t outputs x_{t-1} on the pixels committed before it and its own
        # prediction on the rest, so it is judged on that image. Committed pixels are data (no
        # gradient); the L1 and the NLL cover only the pixels still open at its input m_{t-1}.
        # The spread's x_t already holds x_{t-1} there (bit for bit), so it is read from x_t.
        m_in_TBHW1 = jnp.concatenate([m0[None].astype(jnp.float32), traj["mask"][:-1]], axis=0)
        committed_TBHW1 = (m_in_TBHW1 > 0.5) & (m0[None] < 0.5)
        pred_TBHWC = jnp.where(committed_TBHW1, jax.lax.stop_gradient(traj["x"]), pred_TBHWC)
    fake_TBHWC = m0 * real + (1.0 - m0) * pred_TBHWC if config.loss.composite_fakes else pred_TBHWC
    return {"pred": pred_TBHWC, "fake": fake_TBHWC, "m_in": m_in_TBHW1, "mean": mean_TBHWC,
            "log_var": log_var_TBHWC}


def _augmented_d_logits(config, models, d_params, fake_TBHWC, m0, key, p):
    """ADA on all T x B fakes (per-sample draws), then one D call per iteration -> [T, B].

    The T x B fakes are merged batch-major (sample b's iterations side by side): the batch axis
    stays the outer one, so its data-parallel sharding survives the reshape. Merged iteration-major,
    XLA cannot split the merged axis over the batch's devices and gathers every fake onto every
    device, so each ran ADA and D on the whole global batch (docs/SCALING.md).
    """
    T, B = fake_TBHWC.shape[:2]
    fake_NHWC = jnp.swapaxes(fake_TBHWC, 0, 1).reshape((B * T,) + fake_TBHWC.shape[2:])
    aug_img, aug_mask = _augment(config, key, fake_NHWC, jnp.repeat(m0, T, axis=0), p)
    img_TBHWC = jnp.swapaxes(aug_img.reshape((B, T) + fake_TBHWC.shape[2:]), 0, 1)
    mask_TBHW1 = jnp.swapaxes(aug_mask.reshape((B, T) + aug_mask.shape[1:]), 0, 1)
    return d_logits_per_iteration(models, d_params, img_TBHWC, mask_TBHW1, config.compute_dtype)


def _g_loss(g_params, state, batch, key, *, config, models):
    real, m0 = batch["image"], batch["mask"]
    k_spread, k_aug = jax.random.split(key)
    f = _spread_fakes(g_params, state, batch, k_spread, config=config, models=models)
    mean_TBHWC, log_var_TBHWC, fake_TBHWC, m_in_TBHW1 = f["mean"], f["log_var"], f["fake"], f["m_in"]
    T = fake_TBHWC.shape[0]
    fake_logits_TB = _augmented_d_logits(config, models, state["d_params"], fake_TBHWC, m0, k_aug,
                                         state["ada"]["p"])
    lw = config.loss
    weights = losses.generator_loss_weights(lw)
    if models.perceptual_fn is None:
        weights["pcp"] = 0.0
    if not config.spread.decoupled:      # model D: no Gaussian regularisation at all
        weights["nll"] = 0.0
    per_iter = []
    for j in range(T):        # Eq. 10: every spread iteration is supervised
        terms = {"fake_logits": fake_logits_TB[j]}
        if weights["pcp"]:
            terms["pcp"] = models.perceptual_fn(models.perceptual_params, fake_TBHWC[j], real)
        if weights["nll"]:
            nll = losses.discretized_gaussian_nll(real, mean_TBHWC[j], log_var_TBHWC[j],
                                                  edge_bins=lw.nll_edge_bins)
            terms["nll"] = losses.reduce_nll(nll, m_in_TBHW1[j], region=lw.nll_region,
                                             reduction=lw.nll_reduction)
        if weights["l1"]:
            terms["l1"] = losses.l1_loss(fake_TBHWC[j], real, weight_mask=1.0 - m_in_TBHW1[j])
        per_iter.append(terms)
    total, terms = losses.generator_loss(per_iter, weights)
    terms.pop("g_total")
    aux = {"fakes": jax.lax.stop_gradient(fake_TBHWC), "terms": terms,
           "g_logits_fake": fake_logits_TB.mean(),
           "sigma_hole": (jnp.exp(0.5 * log_var_TBHWC) * (1 - m0)).sum() / jnp.maximum(
               (1 - m0).sum() * T * 3, 1.0)}
    return total, aux


def _d_loss(d_params, state, batch, fake_TBHWC, key, *, config, models):
    k_real, k_fake = jax.random.split(key)
    p = state["ada"]["p"]
    real_img, real_mask = _augment(config, k_real, batch["image"], batch["mask"], p)
    real_logits = _d_logits(models, d_params, real_img, real_mask, config.compute_dtype)
    fake_logits = _augmented_d_logits(config, models, d_params, fake_TBHWC, batch["mask"], k_fake,
                                      p).reshape(-1)
    loss = losses.d_adv_loss(real_logits, fake_logits)
    return loss, {"d_logits_real": real_logits.mean(), "d_logits_fake": fake_logits.mean(),
                  "d_sign_real": jnp.sign(real_logits).mean()}


def make_train_step(config: ml_collections.ConfigDict, models: Models) -> Callable:
    """Returns ``train_step(state, batch) -> (state, metrics)`` (jit it with donation)."""
    g_tx, d_tx = make_optimizers(config)
    base_key = jax.random.key(config.seed)

    def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict]:
        key = jax.random.fold_in(base_key, state["step"])
        k_g, k_d, k_w, k_fresh = jax.random.split(key, 4)
        # ---- generator
        (g_total, g_aux), g_grads = jax.value_and_grad(_g_loss, has_aux=True)(
            state["g_params"], state, batch, k_g, config=config, models=models)
        g_updates, g_opt = g_tx.update(g_grads, state["g_opt"], state["g_params"])
        g_params = optax.apply_updates(state["g_params"], g_updates)
        beta = ema_beta(config, state["step"])
        g_ema = jax.tree.map(lambda p, e: p + (e - p) * beta, g_params, state["g_ema_params"])
        # ---- discriminator, on fresh fakes of the updated G (MAT's Dmain) or on G's own
        fakes_TBHWC = g_aux["fakes"]
        if config.loss.d_fresh_fakes:
            fresh = _spread_fakes(g_params, dict(state, g_params=g_params), batch, k_fresh,
                                  config=config, models=models)
            fakes_TBHWC = jax.lax.stop_gradient(fresh["fake"])
        (d_total, d_aux), d_grads = jax.value_and_grad(_d_loss, has_aux=True)(
            state["d_params"], state, batch, fakes_TBHWC, k_d, config=config, models=models)
        d_updates, d_opt = d_tx.update(d_grads, state["d_opt"], state["d_params"])
        d_params = optax.apply_updates(state["d_params"], d_updates)
        # ---- ADA: accumulate sign(D(real)) and adjust p every `interval` steps
        acc = state["ada"]["acc"] + d_aux["d_sign_real"]
        n = state["ada"]["n"] + 1
        due = n >= config.ada.interval
        new_p = ada.update_p(state["ada"]["p"], acc / n, batch_size=config.batch_size,
                             cfg=config.ada) if config.ada.enabled else state["ada"]["p"]
        ada_state = {"p": jnp.where(due, new_p, state["ada"]["p"]),
                     "acc": jnp.where(due, 0.0, acc), "n": jnp.where(due, 0, n)}
        g_buffers = update_w_avg(models, g_params, state["g_buffers"], k_w, batch["image"].shape[0])
        new_state = dict(state, step=state["step"] + 1, g_params=g_params, g_opt=g_opt,
                         g_buffers=g_buffers,
                         g_ema_params=g_ema, d_params=d_params, d_opt=d_opt, ada=ada_state)
        metrics = {"g_loss": g_total, "d_loss": d_total, **g_aux["terms"],
                   "g_grad_norm": optax.global_norm(g_grads),
                   "d_grad_norm": optax.global_norm(d_grads),
                   "d_logits_real": d_aux["d_logits_real"], "d_logits_fake": d_aux["d_logits_fake"],
                   "ada_p": state["ada"]["p"], "sigma_hole": g_aux["sigma_hole"]}
        return new_state, metrics

    return train_step


def make_r1_step(config: ml_collections.ConfigDict, models: Models) -> Callable:
    """The lazy R1 step: ``loss = mean(r1) * gamma / 2 * interval`` on D (StyleGAN2)."""
    _, d_tx = make_optimizers(config)
    base_key = jax.random.key(config.seed)

    def r1_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict]:
        key = jax.random.fold_in(jax.random.fold_in(base_key, state["step"]), 1)

        def loss_fn(d_params):
            def logits_fn(images):
                img, msk = _augment(config, key, images, batch["mask"], state["ada"]["p"])
                return _d_logits(models, d_params, img, msk)
            penalty = losses.r1_penalty(logits_fn, batch["image"])
            return penalty.mean() * (config.loss.r1_gamma / 2) * config.loss.r1_interval, penalty

        (loss, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["d_params"])
        updates, d_opt = d_tx.update(grads, state["d_opt"], state["d_params"])
        d_params = optax.apply_updates(state["d_params"], updates)
        return dict(state, d_params=d_params, d_opt=d_opt), {"r1_penalty": penalty.mean(),
                                                             "r1_loss": loss}

    return r1_step
