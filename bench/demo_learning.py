"""How fast can a network learn the demo's inpainting task on this machine? (project issue: demo)

The demo's acceptance asks a model trained for ~10 CPU minutes to beat OpenCV Telea on hole L1.
This script measures the learning speed that bounds it, without the GAN, the spread or EMA: it
trains one network with an L1 loss on the hole (optionally plus the hole NLL) on the demo's data
and masks (configs/demo.py:synthetic, the earlier synthetic demo), then scores the same 64 held-out images as `make demo`
(psm_jax.demo's scorer) against Telea and mean fill.

  --model unet        a plain 16-128-channel conv U-Net (nearest-neighbour upsampling, additive
                      skips; standard init); the "how fast can any small conv net learn this" bar
  --model generator   the PSM generator of configs/demo.py alone (T = 1, no latent, no noise)

    .venv/bin/python bench/demo_learning.py --model unet --kind tiles --steps 1000 --lr 5e-4
    .venv/bin/python bench/demo_learning.py --model generator --kind tiles --steps 1000 --lr 1e-2

One JSON line: hole L1 (0-255) of the model, Telea and mean fill, the mean training L1 of the
last 100 steps ([-1, 1] units), training images per second (after compilation) and the training
wall time. Minutes on a 2-core CPU at the defaults; `--steps 10 --num_eval_images 16` is a smoke run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from psm_jax import demo  # noqa: E402
from psm_jax import losses  # noqa: E402
from psm_jax.config_lib import load_config  # noqa: E402
from psm_jax.data import pipeline, synthetic  # noqa: E402
from psm_jax.evaluators import image_metrics  # noqa: E402
from psm_jax.data.transforms import from_model_range  # noqa: E402
from psm_jax.models.generator import Generator  # noqa: E402


class UNet(nn.Module):
    """Conv U-Net: a stride-2 encoder (16 -> 128 channels, five downsamplings) and a decoder that
    upsamples by nearest neighbour and adds the encoder feature of the same scale."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 128, 128)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        act = lambda h: nn.leaky_relu(h, 0.2)  # noqa: E731
        h = act(nn.Conv(self.widths[0], (3, 3))(x_BHWC))
        skips = []
        for c in self.widths[1:]:
            skips.append(h)
            h = act(nn.Conv(c, (3, 3), strides=2)(h))
            h = act(nn.Conv(c, (3, 3))(h))
        for c, skip in zip(reversed(self.widths[:-1]), reversed(skips)):
            b, hh, ww, ch = h.shape
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, ch), "nearest")
            h = act(nn.Conv(c, (3, 3))(h)) + skip
            h = act(nn.Conv(c, (3, 3))(h))
        return nn.Conv(3, (1, 1))(h)


def make_model(kind: str, config):
    """(init(key) -> variables, apply(variables, x, m) -> (mean, log_var or None))."""
    r = config.model.resolution
    if kind == "unet":
        net = UNet()
        init = lambda key: net.init(key, jnp.zeros((1, r, r, 4)))  # noqa: E731
        apply = lambda v, x, m: (net.apply(v, jnp.concatenate([x * m, m - 0.5], -1)), None)  # noqa: E731
        return init, apply
    g = Generator(**config.model)
    ones = jnp.ones((1, r, r, 1))
    init = lambda key: g.init(key, jnp.zeros((1, r, r, 3)), ones, ones, ones, 0.5)  # noqa: E731
    # The spread's first iteration: holes zeroed, m = m0, uncertainty 1 on the hole, t = 0.
    apply = lambda v, x, m: g.apply(v, x * m, m, m, 1.0 - m, 0.0, noise_mode="none")  # noqa: E731
    return init, apply


def hole_l1_scores(config, predict, num_images: int, seed: int) -> dict[str, float]:
    acc = {k: [0.0, 0] for k in ("model", "telea", "mean_fill")}
    for batch in pipeline.make_eval_dataset(config.data, batch_size=16, num_images=num_images, seed=seed):
        x, mask = np.asarray(batch["image"]), np.asarray(batch["mask"])
        real = from_model_range(x)
        ours = from_model_range(np.where(mask > 0.5, x, np.asarray(predict(x, mask))))
        preds = {"model": ours, "telea": np.stack([demo.telea(r, m) for r, m in zip(real, mask)]),
                 "mean_fill": np.stack([demo.mean_fill(r, m) for r, m in zip(real, mask)])}
        for k, pred in preds.items():
            s, n = image_metrics.hole_l1(pred, real, mask)
            acc[k][0] += float(np.sum(s))
            acc[k][1] += float(np.sum(n))
    return {k: round(s / n, 2) for k, (s, n) in acc.items()}


def main(argv: list[str]) -> None:
    p = common.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("unet", "generator"), default="unet")
    p.add_argument("--kind", choices=synthetic.KINDS, default="layered", help="config.data.synthetic_kind")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--nll_weight", type=float, default=0.0, help="generator only: + w * hole NLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_eval_images", type=int, default=0, help="0 = the demo's (config.demo.eval_images, 64)")
    args = p.parse_args(argv)
    if (args.steps < 2 or args.batch_size < 1 or args.lr <= 0 or args.num_eval_images < 0
            or (args.nll_weight and args.model == "unet")):
        common.fail("bench/demo_learning.py", "expected --steps >= 2, --batch_size >= 1, --lr > 0, "
                    "--num_eval_images >= 0, and --nll_weight only with --model generator")
    config = load_config("configs/demo.py:synthetic", {"data.synthetic_kind": args.kind})
    init, apply = make_model(args.model, config)
    variables = init(jax.random.key(args.seed))
    params = variables["params"]
    frozen = {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(args.lr, b1=0.9, b2=0.99)

    def loss_fn(params, x, m):
        mean, log_var = apply({"params": params, **frozen}, x, m)
        l1 = losses.l1_loss(mean, x, 1.0 - m)
        if not args.nll_weight:
            return l1, l1
        nll = losses.discretized_gaussian_nll(x, mean, log_var)
        return l1 + args.nll_weight * losses.reduce_nll(nll, m, region="hole", reduction="mean"), l1

    @jax.jit
    def step(params, opt, x, m):
        (_, l1), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, m)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, l1

    opt = tx.init(params)
    it = pipeline.make_train_iterator(config.data, global_batch_size=args.batch_size, seed=args.seed)
    l1s = []
    for i in range(args.steps):
        if i == 1:  # time from the second step on: the first one compiles
            jax.block_until_ready(params)
            t0 = time.perf_counter()
        b = next(it)
        params, opt, l1 = step(params, opt, jnp.asarray(b["image"]), jnp.asarray(b["mask"]))
        l1s.append(l1)
    train_l1 = float(np.mean(jax.device_get(l1s[-100:])))
    train_s = time.perf_counter() - t0
    predict = jax.jit(lambda x, m: apply({"params": params, **frozen}, x, m)[0])
    scores = hole_l1_scores(config, predict, args.num_eval_images or config.demo.eval_images, config.demo.eval_seed)
    common.emit({"bench": "demo_learning", "model": args.model, "kind": args.kind, "steps": args.steps,
                 "batch": args.batch_size, "lr": args.lr, "nll_weight": args.nll_weight,
                 "hole_l1": scores["model"], "telea": scores["telea"], "mean_fill": scores["mean_fill"],
                 "train_l1_last100": round(train_l1, 3),
                 "img_per_s": round((args.steps - 1) * args.batch_size / train_s, 1),
                 "train_s": round(train_s, 1), **common.device_info()})


if __name__ == "__main__":
    main(sys.argv[1:])
