"""PSM paper configs (Sec. 4.1-4.2, Supp. D) and the ablations of Tables 1, 2 and 4 (Sec. 4.3).

Every field's default is the paper's reading; where the paper is silent it is MAT's choice. Each
such choice is a row of docs/FIDELITY.md. Launch (one host; pods add --distributed, see launch/):

  python -m psm_jax.main --config configs/psm.py:places512 --workdir runs/places512 \\
      --config.data.path=/data/places2/train
  python -m psm_jax.main --config configs/psm.py:celeba512 --workdir runs/celeba512 \\
      --config.data.path=/data/celeba-hq/train
  python -m psm_jax.main --config configs/psm.py:A --workdir runs/table1_A        # Table 1, model A
  python -m psm_jax.main --config configs/psm.py:A,schedule=cosine --workdir ...   # Table 4
  python -m psm_jax.main --config configs/psm.py:A,att=relative --workdir ...      # other reading
  python -m psm_jax.main --config configs/psm.py:tiny --workdir /tmp/tiny          # CPU, seconds

Variants:
  places512 / celeba512  512x512, 20M images (625k steps at batch 32), T_train = 2, T_test = 4.
  celeba256              Supp. D: 256x256 CelebA-HQ, 12M images, otherwise as celeba512.
  places256              the ablation base: 256x256 Places365-Standard (tfds places365_small),
                         6M images, T = 3 (model A).
  A..G                   Table 1's models on places256. "We adjust the iteration number and
                         maintain the same setup during training and testing" (Sec. 4.3), so
                         each tests with its own training T; Table 2 re-tests A and B with
                         ``test_iters=4..10`` (an argument, e.g. ``configs/psm.py:A,test_iters=7``).
  tiny                   16x16 synthetic data, the test model (model_config("tiny"): 2 levels,
                         attention at the 4x4 bottleneck, a few channels), the paper's code paths
                         (top_k picker, fresh fakes, style mixing; the train spread unrolled, as
                         on any CPU config): for tests and smoke runs.

Arguments (after the variant, comma separated): ``schedule=linear|cosine|sqrt|cubic`` (Table 4),
``test_iters=N`` (0 = the variant's own), ``att=absolute|relative`` (the attention-scale reading
of Table 1, see ATTENTION below).
"""
from psm_jax.config_lib import base_config, parse_arg, set_dotted
from psm_jax.data.pipeline import default_data_config
from psm_jax.models.generator import model_config

# Table 1 (Sec. 4.3): what each ablation model changes relative to model A.
ABLATIONS = {
    "A": {},
    "B": {"spread.train_iters": 1},
    "C": {"spread.train_iters": 2},
    "D": {"spread.decoupled": False},            # no decoupled probabilistic modelling
    "E": {"spread.alpha": 0.0},                  # no continuous sampling
    "F": {"model.uncertainty_guided": False},    # no uncertainty-guided attention
    "G": {},                                     # attention only at 16x16 (ATTENTION below)
}

# Attention scales, as downsampling factors H / res, at 256 (Table 1's "Att. Res." column).
# Sec. 4.3 names absolute sizes, "32x32, 16x16 (model A) and only at 16x16 (model G)", while
# Sec. 4.2 / Supp. A describe the 512 model relatively, "H/16 x W/16 and H/32 x W/32".
# "absolute" (default) takes Table 1's sizes at face value: H/8 and H/16 at 256. "relative"
# keeps the 512 model's H/16 and H/32. Both give G = H/16 (16x16 at 256).
ATTENTION = {
    "absolute": {"A": (8, 16), "G": (16,)},
    "relative": {"A": (16, 32), "G": (16,)},
}

DATASETS = {
    "places512": {"data.source": "folder", "data.resolution": 512},
    "celeba512": {"data.source": "folder", "data.resolution": 512},
    "celeba256": {"data.source": "folder", "data.resolution": 256},
    "places256": {"data.source": "tfds", "data.tfds_name": "places365_small",
                  "data.tfds_split": "train", "data.resolution": 256},
}

# Images seen in training (Sec. 4.2: 20M; Sec. 4.3: 6M; Supp. D: 12M).
TRAIN_IMAGES = {"places512": 20_000_000, "celeba512": 20_000_000, "celeba256": 12_000_000,
                "places256": 6_000_000}


def get_config(arg=None):
    a = parse_arg(arg, variant="places512", schedule="linear", test_iters=0, att="absolute")
    if a.att not in ATTENTION:
        raise ValueError(f"configs/psm.py: att={a.att!r}; expected one of {', '.join(ATTENTION)}")
    c = base_config()
    c.data = default_data_config()
    c.spread.schedule = a.schedule
    variant = a.variant
    if variant in ABLATIONS or variant == "places256":
        c.model = model_config("paper256")
        c.spread.train_iters = 3                         # Table 1: model A trains with 3 iterations
        c.model.attention_downsample = ATTENTION[a.att]["G" if variant == "G" else "A"]
        for k, v in {**DATASETS["places256"], **ABLATIONS.get(variant, {})}.items():
            set_dotted(c, k, v)
        c.spread.test_iters = c.spread.train_iters       # Sec. 4.3: same T in training and test
        c.total_steps = TRAIN_IMAGES["places256"] // c.batch_size
    elif variant in ("places512", "celeba512", "celeba256"):
        c.model = model_config("paper512" if variant.endswith("512") else "paper256")
        for k, v in DATASETS[variant].items():
            set_dotted(c, k, v)
        c.total_steps = TRAIN_IMAGES[variant] // c.batch_size
    elif variant == "tiny":
        c.model = model_config("tiny")
        c.data.source = "synthetic"
        c.data.resolution = c.model.resolution
        c.data.num_workers = 0
        c.discriminator.channel_base = 256
        c.discriminator.channel_max = 32
        c.discriminator.mbstd_group_size = 2
        c.batch_size = 4
        c.total_steps = 6
        c.loss.perceptual_random_init = True     # tests never load real weights
        # One bottleneck per stage, 8 wide: the perceptual code path at a fraction of ResNet-50's
        # compile time (its weights are random here anyway).
        c.loss.perceptual_stages = (1, 1, 1, 1)
        c.loss.perceptual_width = 8
        c.log_every = 1
        c.ckpt_every = 3
        c.eval.update(every=6, num_images=8, batch_size=4)   # an in-training eval at the end
        # A CPU config: XLA:CPU compiles (and runs the backward of) the scanned train spread many
        # times slower than the unrolled one; the scan itself is checked in tests/test_spread.py.
        c.spread.unroll_train = True
        c.sample_every = 0
        c.log_batch_digest = True
        c.ema.kimg = 0.01
    else:
        raise ValueError(f"configs/psm.py: unknown variant {variant!r}; expected one of "
                         f"places512, celeba512, celeba256, places256, {', '.join(ABLATIONS)}, tiny")
    if a.test_iters:
        if a.test_iters < 1:
            raise ValueError(f"configs/psm.py: test_iters={a.test_iters}; expected >= 1 (0 = default)")
        c.spread.test_iters = a.test_iters
    return c


# ------------------------------------------------------------------------------------ sweeps
# FID of the paper's tables (Places365-Standard 256, 6M images; Sec. 4.3).
PAPER_FID = {
    "table1": {"A": 2.36, "B": 2.95, "C": 2.55, "D": 2.49, "E": 2.45, "F": 2.44, "G": 2.64},
    "table2": {"A": dict(zip(range(4, 11), (2.23, 2.16, 2.12, 2.09, 2.07, 2.05, 2.05))),
               "B": dict(zip(range(4, 11), (2.27, 2.20, 2.16, 2.14, 2.12, 2.11, 2.11)))},
    "table4": {"cubic": 2.54, "cosine": 2.48, "linear": 2.36, "sqrt": 2.47},
}


def get_sweep(name):
    """The runs of a paper table, for ``python -m launch.sweep configs/psm.py:NAME``.

    A run is a dict: ``name`` (its workdir under the sweep's), ``arg`` (the config argument after
    ``:``), ``overrides`` (dotted ``--config.*`` values) and ``paper`` (the paper's numbers);
    an evaluation run has ``evaluate`` = {"train_run": name in table1, "iters": T} instead of
    ``arg``. ``smoke`` is two 2-step tiny runs for tests.
    """
    if name == "table1":   # Table 1: models A-G, each trained and tested with its own T
        return [dict(name=m, arg=m, overrides={}, paper={"fid": fid})
                for m, fid in PAPER_FID["table1"].items()]
    if name == "table2":   # Table 2: A and B re-tested at T = 4..10, reusing table1's workdirs
        return [dict(name=f"{m}_T{t}", evaluate={"train_run": m, "iters": t}, paper={"fid": fid})
                for m, by_t in PAPER_FID["table2"].items() for t, fid in by_t.items()]
    if name == "table4":   # Table 4: the four mask schedules on model A (3 iterations)
        return [dict(name=f"A_{s}", arg=f"A,schedule={s}", overrides={}, paper={"fid": fid})
                for s, fid in PAPER_FID["table4"].items()]
    if name == "smoke":
        base = {"total_steps": 2, "ckpt_every": 2, "progress_bar": False}
        # Two data orders of one model: the second run reuses the first one's compiled programs
        # (the data seed never reaches them), so the smoke test costs one compile, not two.
        return [dict(name=f"tiny_data{s}", arg="tiny", overrides={**base, "data.seed": s}, paper={})
                for s in (0, 1)]
    raise ValueError(f"configs/psm.py: unknown sweep {name!r}; expected table1, table2, table4 or smoke")
