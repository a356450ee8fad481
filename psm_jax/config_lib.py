"""The training-config schema shared by every file in ``configs/`` (paper Sec. 4.2).

Config files call :func:`base_config` and then change the few fields a variant needs
(variants are small dicts in the config file, never copies of it). Every field the
trainer reads exists here, so ``lock_config=True`` turns a typo in an override into an
error. Where the paper is silent the default is what MAT (the authors' earlier model)
does, and the comment says so.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import ml_collections

from psm_jax import losses, perceptual, spread
from psm_jax.augment import default_ada_config


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"variant,key=value,flag"`` (the part after ``:`` in ``--config``).

    A bare word sets ``variant`` (first one) or a boolean flag that must be in ``defaults``.
    Values are typed by their default, so ``res=256`` stays an int.
    """
    out = dict(defaults)
    variant_set = False
    for token in filter(None, (arg or "").split(",")):
        if "=" in token:
            key, value = token.split("=", 1)
            if key not in defaults:
                raise ValueError(f"config arg: unknown key {key!r}; expected one of {sorted(defaults)}")
            default = defaults[key]
            out[key] = type(default)(value) if default is not None else value
        elif isinstance(defaults.get(token), bool):
            out[token] = True
        elif "variant" in defaults and not variant_set:
            out["variant"], variant_set = token, True
        else:
            raise ValueError(f"config arg: cannot parse {token!r}")
    return ml_collections.ConfigDict(out)


def set_dotted(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """``config.a.b = value`` for ``dotted = "a.b"``: the one way config files, ``load_config`` and
    sweeps set a nested field. A locked config raises KeyError on a key it does not have."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def base_config() -> ml_collections.ConfigDict:
    """All trainer fields with the paper's 512 defaults (Places2, Sec. 4.2)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 625_000             # 20M images / batch 32 (Sec. 4.2)
    c.batch_size = 32                   # global batch (Sec. 4.2)

    # The generator's own fields live in config.model (filled by model_config()).
    c.model = ml_collections.ConfigDict()

    c.discriminator = ml_collections.ConfigDict(dict(
        # MAT's train.py: channel_base 32768, channel_max 512, mbstd group 8 for the
        # places/celeba configs (mat_modules.md sec. 11). The paper says D is "implemented as [25]".
        channel_base=32768,
        channel_max=512,
        mbstd_group_size=8,
        mbstd_num_channels=1,
    ))

    # Every field below is a row of docs/FIDELITY.md (the paper's words, MAT's choice, why).
    c.spread = ml_collections.ConfigDict(dict(
        train_iters=2,                  # Sec. 4.2: "we iterate twice for training"
        test_iters=4,                   # ... "and four times for testing"
        schedule="linear",              # Table 4: linear is best
        alpha=0.01,                     # Eq. 5; model E (no continuous sampling) sets 0
        decoupled=True,                 # model D sets False: no NLL, losses on the sampled result
        # Whether gradients flow from iteration t+1 back into iteration t. The paper is silent;
        # each iteration is supervised on its own (Eq. 10 sums per-iteration losses), so by
        # default the carry is a stop-gradient, like the noisy inputs of a diffusion model.
        grad_through_iters=False,
        # Eq. 5 re-samples every generated pixel from the newest mean (True). False keeps each
        # pixel from the iteration that picked it (our option; see spread.py).
        resample_committed=True,
        # "a preliminary uncertainty map u~_t scaled to [0, 1]": "minmax" (per-image min-max of
        # the variance over the hole, the literal reading) or "exp" (1 - exp(-mean sigma)).
        uncertainty_map="minmax",
        # "top_k": lax.top_k with a static k (the design card); "sort": stable argsort. Same pick.
        picker="top_k",
        remat=False,                    # jax.checkpoint on the scan body (memory vs compute)
        # The paper configs scan the training spread (one loop body: compile time flat in T).
        # CPU configs unroll it: XLA:CPU runs the backward of a conv scan body much slower than
        # unrolled (docs/BENCHMARKS.md, "Speed work"). Inference always scans.
        unroll_train=False,
        # Sec. 3.2: "missing pixels are initialized with the same specified values"; the value (in
        # [-1, 1] image units) is not given: 0.0 (mid-grey) is what the spread writes today.
        init_value=0.0,
        # StyleConv noise at test time: "random" (fresh per call, any image size), "const" (MAT's
        # generate_image; the trained buffers, only at the training resolution) or "none".
        test_noise_mode="random",
    ))

    c.loss = ml_collections.ConfigDict(dict(
        adv_weight=1.0,                 # lambda_1 (Eq. 10)
        pcp_weight=2.0,                 # lambda_2
        nll_weight=1e-4,                # lambda_3
        nll_region="all",               # "all" (Eq. 1) or "hole" (only the initial holes)
        # Eq. 2-3's bins at y = +-1 are open ("open"); "closed" gives them the width 2/255 of every
        # other bin (an open edge bin drives sigma to its clamp on saturated targets; losses.py).
        nll_edge_bins="open",
        # Eq. 1 sums over the D = H*W*C data dimensions, which is what lambda_3 = 1e-4 weighs:
        # "sum" (per-image sum, batch mean). "mean" (per-element mean) is ~1e5-1e6x weaker.
        nll_reduction="sum",
        l1_weight=0.0,                  # not in the paper; demo configs may turn it on
        # Sec. 4.2 "weight modulation training strategies [24, 34]": MAT's style mixing, with its
        # probability 0.9 (one cutoff and one coin per batch, as MAT's run_G).
        style_mixing_prob=0.9,
        # What D and the perceptual loss see: the composited prediction m0*x + (1-m0)*pred (MAT's
        # generator output) or the raw prediction.
        composite_fakes=True,
        # D's update uses fakes re-generated by the updated G with fresh latents (MAT's Dmain
        # phase, True) or the fakes of G's own step (False: one spread less per step).
        d_fresh_fakes=True,
        r1_gamma=10.0,                  # MAT's value for Places/CelebA 512
        r1_interval=16,                 # lazy regularisation (StyleGAN2)
        # MAT keeps StyleGAN2's G_reg_interval = 4 (its path-length term is commented out), so
        # G's Adam runs with lr * 4/5 and betas ** (4/5). 0 = no rescaling.
        g_reg_interval=4,
        # Perceptual network weights: a local .npz of a torchvision ResNet-50 state dict.
        # Empty means random weights, which must be asked for explicitly below.
        perceptual_weights="",
        perceptual_random_init=False,
        # The perceptual network's blocks per stage and stem width: ResNet-50 (Eq. 9) is
        # (3, 4, 6, 3) and 64. Only the random-weight test configs shrink it (compile time).
        perceptual_stages=(3, 4, 6, 3),
        perceptual_width=64,
        # Eq. 9's ||phi_i(x) - phi_i(x_hat)||_2^2 per layer: "mean" over the feature map (as LaMa's
        # HRF loss [56] computes it) or "sum" (per-image sum, batch mean: the norm as written).
        pcp_reduction="mean",
    ))

    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, b1=0.0, b2=0.99, eps=1e-8,
        # G's and D's learning rates are lr * g_lr_mult and lr * d_lr_mult. MAT and the paper use
        # one lr for both (1.0, 1.0); short runs (the CPU demo) train G faster than D.
        g_lr_mult=1.0, d_lr_mult=1.0,
    ))

    c.ema = ml_collections.ConfigDict(dict(
        kimg=10.0,                      # StyleGAN2: ema_kimg = batch * 10 / 32 -> 10 at batch 32
        rampup=0.0,                     # MAT's places/celeba cfgs: ramp=None (0 = off)
    ))

    # ADA (StyleGAN2-ADA, as MAT/PSM train): target 0.6, p adjusted every 4 D steps.
    c.ada = default_ada_config()

    c.data = ml_collections.ConfigDict()   # filled by the data pipeline defaults

    c.mesh = ml_collections.ConfigDict(dict(
        fsdp=1,                         # size of the parameter-sharding axis; the rest is data
    ))
    c.compute_dtype = "float32"         # "bfloat16": bf16 compute, f32 params and optimizer state

    # In-training evaluation of G_ema (psm_jax/train_eval.py): 0 = off. It needs an eval split
    # (data.eval_path / eval_split); eval.inception (a converted .npz) adds FID.
    c.eval = ml_collections.ConfigDict(dict(
        every=0,                        # steps between evals (and at the last step)
        num_images=64,                  # first N records of the eval split, fixed seeded masks
        batch_size=16,
        seed=12345,                     # eval masks and spread keys
        iters=0,                        # spread iterations (0 = spread.test_iters)
        inception="",                   # Inception .npz for FID ("" = no FID)
    ))

    c.log_every = 50
    c.sample_every = 5000
    c.ckpt_every = 5000
    c.keep_ckpts = 3
    c.log_batch_digest = False          # log a SHA-256 of every batch (resume tests)
    c.progress_bar = True
    return c


# StyleConv noise modes (models/layers.py); "const" needs the training resolution.
NOISE_MODES = ("random", "const", "none")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks the enum and range fields a run would otherwise only trip over after compiling.

    Raises ValueError naming the field and what was expected (main.py prints it as one line).
    """
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = c
            for part in field.split("."):
                value = value[part]
            raise ValueError(f"config.{field}={value!r}: expected {expected}")

    need(c.spread.schedule in spread.SCHEDULES, "spread.schedule", f"one of {sorted(spread.SCHEDULES)}")
    need(c.spread.picker in spread.PICKERS, "spread.picker", f"one of {list(spread.PICKERS)}")
    need(c.spread.uncertainty_map in spread.UNCERTAINTY_MAPS, "spread.uncertainty_map",
         f"one of {list(spread.UNCERTAINTY_MAPS)}")
    for field in ("spread.train_iters", "spread.test_iters", "batch_size", "total_steps", "ckpt_every",
                  "loss.r1_interval", "keep_ckpts"):
        section, _, name = field.rpartition(".")
        node = c[section] if section else c
        need(isinstance(node[name], int) and node[name] >= 1, field, "an integer >= 1")
    need(c.loss.nll_region in losses.NLL_REGIONS, "loss.nll_region", f"one of {list(losses.NLL_REGIONS)}")
    need(c.loss.get("nll_edge_bins", "open") in losses.EDGE_BINS, "loss.nll_edge_bins",
         f"one of {list(losses.EDGE_BINS)}")
    need(c.loss.nll_reduction in losses.NLL_REDUCTIONS, "loss.nll_reduction",
         f"one of {list(losses.NLL_REDUCTIONS)}")
    need(0.0 <= c.loss.style_mixing_prob <= 1.0, "loss.style_mixing_prob", "a probability in [0, 1]")
    need(c.spread.alpha >= 0, "spread.alpha", ">= 0")
    if "num_down" in c.model:
        # Inference pads images to multiples of 32 (inpaint/sizing.py, the exported signature).
        need(isinstance(c.model.num_down, int) and 1 <= c.model.num_down <= 5, "model.num_down",
             "an integer from 1 to 5 (inference pads images to multiples of 32)")
    if "var_head" in c.model:
        need(c.model.var_head in ("torgb", "conv"), "model.var_head", "'torgb' or 'conv'")
    if "test_noise_mode" in c.spread:
        need(c.spread.test_noise_mode in NOISE_MODES, "spread.test_noise_mode", f"one of {list(NOISE_MODES)}")
    if "pcp_reduction" in c.loss:
        need(c.loss.pcp_reduction in perceptual.REDUCTIONS, "loss.pcp_reduction",
             f"one of {list(perceptual.REDUCTIONS)}")
    need(c.compute_dtype in ("float32", "bfloat16"), "compute_dtype", "'float32' or 'bfloat16'")
    need(c.eval.every >= 0, "eval.every", ">= 0 (0 = off)")
    if "max_consecutive_corrupt" in c.data:
        need(c.data.max_consecutive_corrupt >= 0, "data.max_consecutive_corrupt", ">= 0 (0 = two epochs)")


def load_config(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` the way ``--config`` does, applies dotted overrides,
    and locks it (so a misspelled override key raises)."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_psm_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.lock()
    for dotted, value in (overrides or {}).items():
        set_dotted(config, dotted, value)
    return config
