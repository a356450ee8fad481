"""The `make demo` config: a small PSM trained on CPU on real handwritten digits (Sec. 3-4 at 32 px).

Same code paths as the paper configs (configs/psm.py): generator, pixel spread, losses, ADA,
EMA, lazy R1 and checkpoints are all on. Every field whose value the demo depends on is set
here explicitly, so a change of a paper default in config_lib.py does not move the demo.

Data (psm_jax/data/digits.py): scikit-learn's 1,797 bundled 8x8 handwritten digits, upscaled
bicubic to 32x32, dark ink on light paper, RGB. Training digits 0-1499, held-out 1500-1796
(the 297 digits the report scores). No flip (a mirrored digit is not a digit): a random shift
of up to 2 px instead. MAT's free-form "large" masks at 32 px. Nothing is downloaded.

The paper's spread (Sec. 3.2-3.3): T_train = 2, T_test = 4, alpha = 0.01, linear schedule.
Departures from the paper, each a named field with a docs/FIDELITY.md row; the measurements
behind them are in docs/DEMO.md:

* loss.nll_edge_bins = "closed": +-1 get the same 2/255 bin as every other level. With Eq. 2-3's
  open edge bins the NLL drives sigma to its clamp on the saturated paper-white background, and
  sigma then anti-ranks the error.
* model.num_down = 3 (a 4x4 bottleneck at 32 px, attention at H/4 and H/8): the paper's H/32
  would leave a 1x1 bottleneck and attention on 2x2 and 1x1 maps.
* spread.resample_committed = False: a generated pixel keeps the value of the iteration that
  picked it (Eq. 5 re-samples it from the newest mean).
* model.time_input = False: the time channel is fed 0 (T_test = 4 shows t = 1/4 and 3/4, which
  T_train = 2 never does).
* spread.uncertainty_map = "exp" (the paper's literal reading is "minmax").
* Losses: adversarial + NLL (the paper's) plus an L1 term on the hole (weight 10); no perceptual
  loss (without the pretrained ResNet-50 weights, which may not be downloaded, it would be a
  random-feature loss). The NLL is weighted 1.0 on the hole pixels with a mean reduction
  (paper: 1e-4, summed over all pixels).
* No random latent code and no per-pixel noise (model.use_latent / use_noise = False): at init
  the output varies far more with z than with the image, and minutes of training cannot undo it.
* model.output_gain = model.var_gain = 0.1 on the summed ToRGB output (MAT: 1.0): MAT's decoder
  starts with an output std of ~4, which puts the initial log variance on the soft clamp.
* Optimisation for a short run: Adam beta1 = 0.9 (paper: 0), lr 2e-3, batch 8, 1,200 steps
  (9,600 images, ~9 min of training on an idle 2-core machine).

Variants (small dicts below, never copies of this file):
  demo       the digits demo above (`make demo`)
  digits64   the same at 64x64 (shift 4 px, 4 U-Net levels); not measured (4x the pixels per step)
  synthetic  the earlier 64x64 procedural demo (data.synthetic_kind "layered" or "tiles")
  tiny       seconds; tests (the 16 px test model of model_config("tiny"))

Argument ``ablation=A..G`` (after the variant): Table 1's model on this config (TABLE1 below),
e.g. ``configs/demo.py:demo,ablation=B``. Sweeps (``get_sweep``): ``repro`` (Table 1 and Table 2
at this scale, docs/REPRODUCTION.md; ``repro,seeds=3`` adds a third training seed) and
``repro_tiny`` (its machinery in minutes, for tests).

  python -m psm_jax.demo --workdir runs/demo                                  # what `make demo` runs
  python -m psm_jax.main --config configs/demo.py --workdir runs/demo_train    # training only
  python -m psm_jax.demo --config configs/demo.py:synthetic --workdir runs/demo_synth \\
      --set data.synthetic_kind=tiles                                         # the old demo, on tiles
  python -m psm_jax.main --config configs/demo.py:tiny --workdir /tmp/tiny     # seconds (tests)
  python -m launch.sweep configs/demo.py:repro && python -m launch.collect runs/repro   # the study
"""
import importlib.util
from pathlib import Path

import ml_collections

from psm_jax.config_lib import base_config, parse_arg, set_dotted
from psm_jax.data.pipeline import default_data_config
from psm_jax.models.generator import model_config

# Generator widths of the demo: 16 -> 128 channels (on model_config("paper512")'s other fields).
DEMO_MODEL = dict(channel_base=16, channel_max=128, z_dim=64, w_dim=64, global_style_dim=64,
                  num_heads=2, uga_channels=8)

# Dotted overrides applied on top of the digits demo.
VARIANTS = {
    "demo": {},
    # 64 px keeps the demo's proportions: a 4x4 bottleneck, attention at H/8 and H/16.
    "digits64": {"model.resolution": 64, "data.resolution": 64, "data.digits_shift": 4,
                 "model.num_down": 4, "model.attention_downsample": (8, 16)},
    "synthetic": {
        "model.resolution": 64, "data.resolution": 64, "data.source": "synthetic",
        "model.num_down": 4, "model.attention_downsample": (8, 16),
        "data.synthetic_kind": "layered", "data.synthetic_size": 20_000,
        "spread.resample_committed": False, "model.time_input": False,
        "demo.eval_images": 64,
    },
    "tiny": {
        # generator.model_config("tiny"), the test model: 16x16 digits, a 2-level U-Net, a few channels.
        "model": "tiny", "data.digits_shift": 1,
        "discriminator.channel_base": 256, "discriminator.channel_max": 32,
        "discriminator.mbstd_group_size": 2,
        # Batch 8 fills 8 devices and 2 processes x 2 devices. Adam's eps = 1e-3: with 1e-8 a
        # parameter whose gradient is pure rounding noise moves by +-lr on the sign of that noise,
        # so runs on different device layouts would differ by more than their arithmetic.
        "batch_size": 8, "optim.eps": 1e-3,
        "total_steps": 6, "log_every": 1, "ckpt_every": 3, "keep_ckpts": 3,
        "log_batch_digest": True, "ema.kimg": 0.01, "demo.eval_images": 8,
    },
}


# Table 1's models (Sec. 4.3) relative to this config, with configs/psm.py's ABLATIONS: A trains
# with 3 iterations, B-G change one thing each from A, and every model tests with its own T.
# G keeps the finer of the two attention scales: configs/psm.py's "relative" reading (A at H/16
# and H/32, G at H/16) applied to the demo's (H/4, H/8) gives G = H/4.
TABLE1_TRAIN_ITERS = 3
# Table 2 at this scale: every trained model is tested at these T.
REPRO_TEST_ITERS = (1, 2, 3, 4, 6, 8)


def _paper_tables():
    """configs/psm.py (ABLATIONS, PAPER_FID), loaded by path as every config file is."""
    spec = importlib.util.spec_from_file_location("_psm_paper_tables", Path(__file__).with_name("psm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table1(c: ml_collections.ConfigDict, model: str) -> None:
    psm = _paper_tables()
    if model not in psm.ABLATIONS:
        raise ValueError(f"configs/demo.py: ablation={model!r}; expected one of {', '.join(psm.ABLATIONS)}")
    c.spread.train_iters = TABLE1_TRAIN_ITERS
    for dotted, value in psm.ABLATIONS[model].items():
        set_dotted(c, dotted, value)
    if model == "G":
        scales = tuple(c.model.attention_downsample)
        if len(scales) != 2:
            raise ValueError(f"configs/demo.py: ablation=G keeps one of two attention scales, but "
                             f"model.attention_downsample is {scales}")
        c.model.attention_downsample = (min(scales),)
    c.spread.test_iters = c.spread.train_iters     # Sec. 4.3: the same T in training and test


def get_config(arg=None):
    a = parse_arg(arg, variant="demo", ablation="")
    if a.variant not in VARIANTS:
        raise ValueError(f"configs/demo.py: unknown variant {a.variant!r}; expected one of {', '.join(VARIANTS)}")
    c = base_config()
    c.seed = 0
    c.model = model_config("paper512")
    c.model.update(DEMO_MODEL)
    # Departures (num_down, time_input, gains, latent, noise): see the docstring.
    c.model.update(resolution=32, num_down=3, attention_downsample=(4, 8), use_latent=False, use_noise=False,
                   output_gain=0.1, var_gain=0.1, time_input=False)

    c.data = default_data_config()
    c.data.update(source="digits", resolution=32, digits_train=(0, 1500), digits_eval=(1500, 1797),
                  digits_shift=2, mask_kind="large", eval_mask_kind="large", hole_range=(0.0, 1.0),
                  num_workers=0, seed=0)

    c.discriminator.update(channel_base=2048, channel_max=64, mbstd_group_size=4, mbstd_num_channels=1)
    # The paper's spread, written out: none of these may follow a paper-config default change.
    # resample_committed=False is the one departure from the paper's spread: see the docstring.
    c.spread.update(train_iters=2, test_iters=4, schedule="linear", alpha=0.01, decoupled=True,
                    grad_through_iters=False, resample_committed=False, remat=False,
                    unroll_train=True,   # XLA CPU: the unrolled train spread is ~5x faster
                    uncertainty_map="exp", picker="top_k")
    c.loss.update(adv_weight=1.0, pcp_weight=0.0, l1_weight=10.0, nll_weight=1.0, nll_region="hole", nll_edge_bins="closed",
                  nll_reduction="mean", r1_gamma=1.0, r1_interval=16,
                  # No latent code, so style mixing would mix two identical w's: off.
                  style_mixing_prob=0.0, composite_fakes=True,
                  # One spread per step (D trains on G's own fakes) and no G lr rescaling: the
                  # settings the earlier demo was measured with (docs/FIDELITY.md).
                  d_fresh_fakes=False, g_reg_interval=0)
    c.optim.update(lr=2e-3, b1=0.9, b2=0.99, eps=1e-8, g_lr_mult=1.0, d_lr_mult=1.0)
    c.ema.update(kimg=1.0, rampup=0.05)
    c.compute_dtype = "float32"
    c.batch_size = 8
    c.total_steps = 1200
    c.log_every = 100
    c.ckpt_every = 200
    c.keep_ckpts = 100          # every checkpoint is kept: the report's learning curve reads them
    c.sample_every = 0          # the report draws the spread figures
    c.progress_bar = True
    c.eval.every = 0            # no in-training eval: the demo's report scores every checkpoint
    # The report (psm_jax/demo.py): eval_images 0 = the whole held-out split (297 digits).
    c.demo = ml_collections.ConfigDict(dict(eval_images=0, eval_seed=12345))

    for dotted, value in VARIANTS[a.variant].items():
        if dotted == "model":
            c.model = model_config(value)
            c.model.update(use_latent=False, use_noise=False, output_gain=0.1, var_gain=0.1, time_input=False)
        else:
            set_dotted(c, dotted, value)
    if a.variant == "tiny":
        c.data.resolution = c.model.resolution
    if a.ablation:
        _table1(c, a.ablation)
    return c


# ------------------------------------------------------------------------------------ sweeps
def get_sweep(name):
    """The reproducibility study (docs/REPRODUCTION.md), for ``python -m launch.sweep configs/demo.py:NAME``.

    ``repro``: Table 1's models A-G (G only where the U-Net has two attention scales) on the demo
    config, each trained with ``seed = data.seed = s`` for s < ``seeds`` (default 2) at the demo's
    budget (its total_steps), then evaluated by ``psm_jax.evaluate`` on the whole held-out split
    with the demo report's seeded masks, at every T of REPRO_TEST_ITERS (Table 2). ``repro_tiny``:
    models B and C, 1 seed, 2 steps, tested at T = 1, 2 (the study's machinery, for tests).
    Each run carries ``study`` = {model, seed} for ``launch.collect``; runs/repro/M_sS is model M's
    training with seed S and M_sS_eval its evaluation.
    """
    a = parse_arg(name, variant="", seeds=None)
    if a.variant == "repro":
        variant, models, iters, seeds = "demo", "ABCDEF", REPRO_TEST_ITERS, a.seeds or "2"
        if len(get_config("demo").model.attention_downsample) == 2:
            models += "G"
        extra = {}
    elif a.variant == "repro_tiny":
        variant, models, iters, seeds = "tiny", "BC", (1, 2), a.seeds or "1"
        extra = {"total_steps": 2, "ckpt_every": 2, "progress_bar": False}
    else:
        raise ValueError(f"configs/demo.py: unknown sweep {name!r}; expected repro[,seeds=N] or repro_tiny")
    if not seeds.isdigit() or int(seeds) < 1:
        raise ValueError(f"configs/demo.py: sweep {name!r}: seeds={seeds}; expected an integer >= 1")
    seeds = int(seeds)
    paper = _paper_tables().PAPER_FID
    demo = get_config(variant)
    runs = []
    for s in range(seeds):
        for m in models:
            study = {"model": m, "seed": s}
            fid = {"fid": paper["table1"][m]}
            runs.append(dict(name=f"{m}_s{s}", arg=f"{variant},ablation={m}", paper=fid, study=study,
                             overrides={"seed": s, "data.seed": s, "keep_ckpts": 2, **extra}))
            runs.append(dict(name=f"{m}_s{s}_eval", paper={**fid, "fid_by_iters": paper["table2"].get(m, {})},
                             study=study, evaluate={
                                 "train_run": f"{m}_s{s}", "iters": list(iters), "images": "from_config",
                                 "masks": demo.data.eval_mask_kind, "inception": False,
                                 "seed": demo.demo.eval_seed, "batch_size": 16, "calib_samples": 0,
                                 "save_images": 8}))
    return runs
