"""The pixel spread process (paper Sec. 3.1.2, Eq. 4-5; mask schedules of Table 4).

One iteration ``t = 1..T`` of PSM, written as a single ``lax.scan`` body so that compile
time does not grow with ``T``:

1. **Predict.** ``mean_t, log_var_t = apply_fn(x_{t-1}, m_0, m_{t-1}, u_{t-1}, t_frac, key_t)``.
   ``sigma_t = exp(log_var_t / 2)``.
2. **Pick.** Among the pixels still unknown (``m_{t-1} = 0``), the ``k_t`` with the lowest
   uncertainty become known, where ``k_t`` makes the *cumulative* number of generated-known
   pixels equal :func:`schedule_counts` for that image. The count is per image: holes in one
   batch differ, and images with no hole (or all hole) are handled exactly.
3. **Sample** (Eq. 5). ``x_t = x_0 + (m_t - m_0) * (mean_t + alpha * sigma_t * z)``, without
   the noise term at the final iteration, so the output is ``x_0 + (1 - m_0) * mean_T``.

Decisions (the paper leaves them open):

* **Preliminary uncertainty map.** The 3-channel ``sigma_t`` is reduced to one value per pixel
  by its mean over the colour channels, ``sbar = mean_c sigma_t``. That is squashed to [0, 1]
  by the monotone map ``u~ = 1 - exp(-sbar / sigma_scale)`` (``sigma_scale = 1`` by default,
  i.e. one unit of the [-1, 1] image range). We use an absolute map, not a per-image min-max
  normalisation, because ``u`` is fed back to the network (input channel and attention bias)
  and should mean the same thing in every image and iteration. Only the order of ``sbar``
  matters for picking, so picking ranks ``sbar`` itself (it never saturates, unlike ``u~``
  in float32); non-finite ``sbar`` ranks last among the unknown pixels.
* **Ties** in the ranking are broken by the flat pixel index (stable sort), so the pick is
  deterministic.
* **Time input.** ``t_frac = (t - 1) / T`` for iteration ``t`` (1-based), i.e. the fraction of
  iterations already done when ``x_{t-1}`` is fed in: 0 at the first iteration, ``(T-1)/T`` at
  the last. It is passed as a float array of shape ``[B]``. Because it is a fraction, the
  test-time ``T`` may differ from the training ``T``.
* **Keys.** Iteration ``t`` (0-based index ``i``) uses ``key_i = fold_in(key, i)``, split into
  the key for ``apply_fn`` and the key for the sampling noise ``z``.
* **Gradients between iterations.** With ``stop_grad_between_iters=True`` (default) the carry
  ``(x_{t-1}, u_{t-1})`` is passed through ``lax.stop_gradient`` before the network reads it:
  every iteration is supervised on its own outputs (paper Eq. 10 sums per-iteration losses),
  so back-propagating through the whole chain would only add memory and the instability of a
  deep recurrent graph. This is our choice, not something the paper or MAT specifies. It also
  cuts the gradient into ``image`` through the network input of the first iteration.
* **Known pixels** are written with ``jnp.where`` rather than the product of Eq. 5, so they are
  bit-identical to the input even if the network returns non-finite values there.
* The mask is binarised with ``mask > 0.5``.
* **Committed pixels** (``resample_committed``). Eq. 5 read literally re-samples *every*
  generated-known pixel from the current ``mean_t`` at each iteration, so the output is
  ``mean_T`` on the whole hole and earlier iterations only act through the network input. That
  is the default. ``resample_committed=False`` is our option, not the paper's: a pixel keeps the
  value it was given in the iteration that picked it, and only ``m_t - m_{t-1}`` is sampled.
  Each pixel is then produced by the iteration that was most certain about it (the pick), which
  matters when later iterations are not reliably better on old pixels (a short CPU run).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[..., tuple[jax.Array, jax.Array]]

# s(r): fraction of an image's holes that is generated-known after a fraction r of the
# iterations (Table 4 / Fig. 7). Evaluated on the host in float64 (T is static).
SCHEDULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda r: r,
    "cosine": lambda r: 1.0 - np.cos(np.pi * r / 2.0),
    "sqrt": lambda r: np.sqrt(r),
    "cubic": lambda r: r**3,
}

# Fixed-point precision of s(t/T) in schedule_counts: 48 fractional bits, as 4 limbs of 12.
_LIMB_BITS = 12
_FRAC_LIMBS = 4


def schedule_fractions(num_iters: int, schedule: str) -> np.ndarray:
    """Returns s(t/T) for t = 1..T as float64 [T]; the last entry is exactly 1."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown mask schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    if not isinstance(num_iters, (int, np.integer)) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive int, got {num_iters!r}")
    r = np.arange(1, num_iters + 1, dtype=np.float64) / num_iters
    s = np.clip(SCHEDULES[schedule](r), 0.0, 1.0)
    s[-1] = 1.0
    return s


def schedule_counts(num_holes: jax.Array, num_iters: int, schedule: str = "linear") -> jax.Array:
    """Cumulative number of generated-known pixels after each iteration.

    Args:
      num_holes: int array [B], the hole count of each image (``sum(1 - m_0)``).
      num_iters: T (static).
      schedule: "linear" (s = r), "cosine" (s = 1 - cos(pi r / 2)), "sqrt" (s = sqrt(r)) or
        "cubic" (s = r^3), with r = t/T.

    Returns:
      int32 [B, T]: ``round(num_holes * s(t/T))`` for t = 1..T; the last column is exactly
      ``num_holes``. Works under ``jit`` (num_holes may be traced).

    Why fixed point: float32 ``n * s`` is off by up to ~0.016 at n = 512^2, which would flip
    the rounding of near-ties. s is instead rounded on the host to S = round(s * 2^48) and
    ``n * S`` is computed exactly with int32 limb arithmetic (n < 2^24), so the result equals the
    float64 ``round(n * s)`` except within ~2^-25 of a .5 tie, where either neighbour is
    acceptable. Counts are monotone in t because S is.
    """
    s_T = schedule_fractions(num_iters, schedule)
    n_B = jnp.asarray(num_holes).astype(jnp.int32)
    base = 1 << _LIMB_BITS
    frac_bits = _LIMB_BITS * _FRAC_LIMBS
    # S_t = round(s_t * 2^48) < 2^48 for t < T, split into 4 limbs of 12 bits (host, exact ints).
    s_int = [min(int(round(math.ldexp(float(s), frac_bits))), (1 << frac_bits) - 1) for s in s_T]
    limbs_LT = np.array([[(v >> (_LIMB_BITS * j)) & (base - 1) for v in s_int]
                         for j in range(_FRAC_LIMBS)], dtype=np.int32)          # [4, T]
    n_lo_B1 = (n_B & (base - 1))[:, None]
    n_hi_B1 = (n_B >> _LIMB_BITS)[:, None]
    # Column sums of the schoolbook product n * S in base 2^12; each term < 2^24, sums < 2^26.
    cols = [n_lo_B1 * limbs_LT[0][None]]
    for j in range(1, _FRAC_LIMBS):
        cols.append(n_lo_B1 * limbs_LT[j][None] + n_hi_B1 * limbs_LT[j - 1][None])
    top_BT = n_hi_B1 * limbs_LT[_FRAC_LIMBS - 1][None]
    # Add 2^47 (half of 2^48) for round-half-up, then carry through the fractional columns.
    cols[-1] = cols[-1] + (1 << (_LIMB_BITS - 1))
    carry = jnp.zeros_like(top_BT)
    for col in cols:
        carry = (col + carry) >> _LIMB_BITS
    counts_BT = jnp.clip(top_BT + carry, 0, n_B[:, None])
    # s(1) = 1 exactly: the last column is the hole count itself.
    return counts_BT.at[:, -1].set(n_B)


def preliminary_uncertainty(sigma_BHW3: jax.Array, sigma_scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Returns (u~ in [0, 1] as [B,H,W,1], sbar [B,H,W,1]); see the module docstring."""
    sbar_BHW1 = jnp.mean(sigma_BHW3, axis=-1, keepdims=True)
    u_BHW1 = -jnp.expm1(-sbar_BHW1 / sigma_scale)  # = 1 - exp(-sbar/scale), exact near 0
    u_BHW1 = jnp.clip(jnp.nan_to_num(u_BHW1, nan=1.0), 0.0, 1.0)
    return u_BHW1, sbar_BHW1


def pick_lowest(score_BHW1: jax.Array, m_BHW1: jax.Array, k_B: jax.Array) -> jax.Array:
    """Marks the k_B lowest-score unknown pixels of each image; returns the new mask.

    Static shapes under jit: one stable sort per image ranks all pixels (known pixels get +inf
    so they rank after every unknown one), then the first k_B of the sorted order are set.
    ``k_B`` never exceeds the number of unknown pixels (it comes from schedule_counts).
    """
    b, h, w, _ = score_BHW1.shape
    known_BN = m_BHW1.reshape(b, h * w) > 0.5
    finite_max = jnp.finfo(score_BHW1.dtype).max
    s_BN = jnp.nan_to_num(score_BHW1.reshape(b, h * w), nan=finite_max, posinf=finite_max,
                          neginf=-finite_max)
    s_BN = jnp.where(known_BN, jnp.inf, s_BN)
    order_BN = jnp.argsort(s_BN, axis=-1, stable=True)
    take_sorted_BN = jnp.arange(h * w)[None, :] < k_B[:, None]
    rows_B1 = jnp.arange(b)[:, None]
    take_BN = jnp.zeros((b, h * w), bool).at[rows_B1, order_BN].set(take_sorted_BN)
    return jnp.where(known_BN | take_BN, 1.0, 0.0).astype(m_BHW1.dtype).reshape(b, h, w, 1)


def pixel_spread(
    apply_fn: ApplyFn,
    image: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    num_iters: int,
    schedule: str = "linear",
    alpha: float = 0.01,
    return_trajectory: bool = False,
    remat: bool = False,
    stop_grad_between_iters: bool = True,
    sigma_scale: float = 1.0,
    unroll: int | bool = 1,
    resample_committed: bool = True,
) -> dict[str, jax.Array]:
    """Runs T = num_iters pixel-spread iterations (Eq. 4-5).

    Args:
      apply_fn: ``apply_fn(x, m0, m, u, t_frac, key) -> (mean, log_var)``; x, mean, log_var
        [B,H,W,3], m0, m, u [B,H,W,1], t_frac [B] = (t-1)/T, key a PRNG key.
      image: [B,H,W,3] in [-1, 1]; its hole pixels are ignored.
      mask: [B,H,W,1], 1 = known.
      key: PRNG key; iteration i uses ``fold_in(key, i)``.
      num_iters: T (static; independent of the training T).
      schedule: mask schedule name, see :func:`schedule_counts`.
      alpha: noise ratio of Eq. 5 (0 = deterministic sampling, i.e. model E).
      return_trajectory: also return the per-iteration stacks (leading dim T) under
        "trajectory": mean, std, log_var (3 ch), x (the sampled x_t, 3 ch), mask (m_t) and
        uncertainty (u_t) (1 ch). They keep their gradients, for per-iteration supervision.
      remat: wrap the scan body in ``jax.checkpoint`` (recompute activations in backward).
      stop_grad_between_iters: stop gradients through the carry; see the module docstring.
      sigma_scale: scale of the sigma -> u~ map.
      unroll: ``lax.scan``'s unroll. 1 (default) keeps one loop body, so compile time does not
        grow with T. ``True`` unrolls the loop: XLA's CPU backend runs the *backward* of a
        convolutional scan body about 5x slower than the same ops unrolled (measured on the
        demo generator), so the trainer unrolls its small T_train on CPU (config
        ``spread.unroll``).
      resample_committed: True (Eq. 5): every generated-known pixel is re-sampled from the
        current mean at each iteration. False: only the pixels picked in this iteration are
        sampled; earlier ones keep their values (see the module docstring).

    Returns:
      dict with "image" (x_0 + (1-m_0) mean_T, or with ``resample_committed=False`` each hole
      pixel from the iteration that picked it; known pixels bit-identical to ``image``),
      "mask" (all ones), "uncertainty" (u_T) and, if requested, "trajectory".
    """
    schedule_fractions(num_iters, schedule)  # validates schedule and num_iters before tracing
    b = image.shape[0]
    known0_BHW1 = mask > 0.5
    m0_BHW1 = known0_BHW1.astype(image.dtype)
    x0_BHW3 = jnp.where(known0_BHW1, image, jnp.zeros_like(image))
    u0_BHW1 = 1.0 - m0_BHW1
    num_holes_B = jnp.sum(~known0_BHW1, axis=(1, 2, 3)).astype(jnp.int32)
    counts_BT = schedule_counts(num_holes_B, num_iters, schedule)
    prev_counts_BT = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), counts_BT[:, :-1]], axis=1)
    steps_TB = (counts_BT - prev_counts_BT).T  # pixels added at each iteration

    def body(carry, inputs):
        x_BHW3, m_BHW1, u_BHW1 = carry
        i, k_B = inputs
        if stop_grad_between_iters:
            x_BHW3, u_BHW1 = jax.lax.stop_gradient((x_BHW3, u_BHW1))
        key_i = jax.random.fold_in(key, i)
        key_net, key_z = jax.random.split(key_i)
        t_frac_B = jnp.full((b,), i / num_iters, dtype=image.dtype)
        mean_BHW3, log_var_BHW3 = apply_fn(x_BHW3, m0_BHW1, m_BHW1, u_BHW1, t_frac_B, key_net)
        sigma_BHW3 = jnp.exp(0.5 * log_var_BHW3)
        u_pre_BHW1, sbar_BHW1 = preliminary_uncertainty(sigma_BHW3, sigma_scale)
        # Pick: rank by sbar itself (same order as u~, no float saturation).
        m_new_BHW1 = pick_lowest(sbar_BHW1, m_BHW1, k_B)
        gen_BHW1 = (m_new_BHW1 > 0.5) & ~known0_BHW1
        u_new_BHW1 = jnp.where(known0_BHW1, 0.0, jnp.where(gen_BHW1, u_pre_BHW1, 1.0))
        # Sample (Eq. 5); no noise term at the final iteration.
        noise_scale = jnp.where(i == num_iters - 1, 0.0, alpha).astype(image.dtype)
        z_BHW3 = jax.random.normal(key_z, mean_BHW3.shape, mean_BHW3.dtype)
        sample_BHW3 = mean_BHW3 + noise_scale * sigma_BHW3 * z_BHW3
        if resample_committed:
            fresh_BHW1 = gen_BHW1
        else:
            fresh_BHW1 = gen_BHW1 & (m_BHW1 < 0.5)  # picked in this iteration
        x_new_BHW3 = jnp.where(known0_BHW1, image,
                               jnp.where(fresh_BHW1, sample_BHW3,
                                         jnp.where(gen_BHW1, x_BHW3, jnp.zeros_like(sample_BHW3))))
        out = None
        if return_trajectory:
            out = dict(mean=mean_BHW3, std=sigma_BHW3, log_var=log_var_BHW3, x=x_new_BHW3,
                       mask=m_new_BHW1, uncertainty=u_new_BHW1)
        return (x_new_BHW3, m_new_BHW1, u_new_BHW1), out

    if remat:
        body = jax.checkpoint(body)
    init = (x0_BHW3, m0_BHW1, u0_BHW1)
    iters_T = jnp.arange(num_iters, dtype=jnp.int32)
    if unroll is True or (not isinstance(unroll, bool) and unroll >= num_iters):
        # The same body, traced T times (lax.scan keeps a 1-trip while loop even for T = 1).
        carry, outs = init, []
        for i in range(num_iters):
            carry, out = body(carry, (iters_T[i], steps_TB[i]))
            outs.append(out)
        (x_BHW3, m_BHW1, u_BHW1) = carry
        traj = jax.tree.map(lambda *a: jnp.stack(a), *outs) if return_trajectory else None
    else:
        (x_BHW3, m_BHW1, u_BHW1), traj = jax.lax.scan(body, init, (iters_T, steps_TB), unroll=unroll)
    result = {"image": x_BHW3, "mask": m_BHW1, "uncertainty": u_BHW1}
    if return_trajectory:
        result["trajectory"] = traj
    return result
