"""PSM paper configs (Sec. 4.2) and the Table 1 / Table 4 ablations (Sec. 4.3).

Launch (one host; multi-host pods add --distributed):
  python -m psm_jax.main --config configs/psm.py:places512 --workdir runs/places512 \
      --config.data.path=/data/places2/train
  python -m psm_jax.main --config configs/psm.py:celeba512 --workdir runs/celeba512 \
      --config.data.path=/data/celeba-hq/train
  python -m psm_jax.main --config configs/psm.py:A --workdir runs/ablation_A      # Table 1 model A
  python -m psm_jax.main --config configs/psm.py:A,schedule=cosine --workdir ...  # Table 4
  python -m psm_jax.main --config configs/psm.py:tiny --workdir /tmp/tiny         # CPU, seconds

Variants:
  places512 / celeba512  512x512, 20M images (625k steps at batch 32), T_train=2, T_test=4.
  places256              the ablation base: 256x256 Places365-Standard (tfds places365_small),
                         6M images. A..G are Table 1's models on it (A = full model, 3 iterations).
  tiny                   32x32 synthetic data, a few-channel model: for tests and smoke runs.
"""
from psm_jax.config_lib import base_config, parse_arg
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
    "G": {"model.attention_downsample": (16,)},  # attention only at H/16 (16x16 at 256)
}

DATASETS = {
    "places512": {"data.source": "folder"},
    "celeba512": {"data.source": "folder"},
    "places256": {"data.source": "tfds", "data.tfds_name": "places365_small",
                  "data.tfds_split": "train"},
}


def _set(c, dotted, value):
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value


def get_config(arg=None):
    a = parse_arg(arg, variant="places512", schedule="linear", test_iters=4)
    c = base_config()
    c.data = default_data_config()
    c.spread.schedule = a.schedule
    c.spread.test_iters = a.test_iters
    variant = a.variant
    if variant in ABLATIONS or variant == "places256":
        c.model = model_config("paper256")
        c.data.resolution = 256
        c.total_steps = 6_000_000 // c.batch_size        # Sec. 4.3: 6M images
        c.spread.train_iters = 3                         # Table 1: model A trains with 3 iterations
        for k, v in DATASETS["places256"].items():
            _set(c, k, v)
        for k, v in ABLATIONS.get(variant, {}).items():
            _set(c, k, v)
    elif variant in ("places512", "celeba512"):
        c.model = model_config("paper512")
        c.data.resolution = 512
        for k, v in DATASETS[variant].items():
            _set(c, k, v)
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
        c.log_every = 1
        c.ckpt_every = 3
        c.sample_every = 0
        c.log_batch_digest = True
        c.ema.kimg = 0.01
    else:
        raise ValueError(f"configs/psm.py: unknown variant {variant!r}; expected one of "
                         f"places512, celeba512, places256, {', '.join(ABLATIONS)}, tiny")
    return c
