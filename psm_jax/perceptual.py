"""High-receptive-field perceptual loss (paper Sec. 3.3, Eq. 9; LaMa's "HRF PL").

``L_pcp = sum_i ||phi_i(x) - phi_i(x_hat)||_2^2`` with ``phi_i`` the outputs of a pre-trained
ResNet-50. As in LaMa, the network is the *dilated* ResNet-50 (layer3/layer4 keep stride 8 and
dilate instead, which is what gives the large receptive field), the layers are layer1..layer4,
and each ``||.||^2`` is by default a mean squared difference over its feature map (so layers of
different sizes weigh alike; ``loss.pcp_reduction = "sum"`` is the literal per-image sum).
Images in [-1, 1] are mapped to [0, 1] and ImageNet-normalised first.

The ResNet is frozen: its variables pass through ``stop_gradient``, the BatchNorms use running
statistics, and it is never in an optimizer.

Weights come from config: ``loss.perceptual_weights`` names a local torchvision ResNet-50 state
dict (``.npz``; see :func:`psm_jax.models.resnet.load_resnet50_weights`). Nothing is downloaded.
With no path the config must say ``loss.perceptual_random_init=True`` explicitly; random
weights are for tests and demos only (they make the loss a random-feature loss) and a warning
is logged.

Notes on fidelity: LaMa's own weights are an ADE20k-segmentation ResNet-50 with a 3-conv
"deep stem", not the torchvision layout; a torchvision ImageNet ResNet-50 is the closest
format we load. Optional config fields (defaults in brackets): ``perceptual_layers``
[layer1..layer4], ``perceptual_layer_weights`` [all 1], ``perceptual_dilated`` [True].
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from psm_jax.models import resnet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LAYERS: tuple[str, ...] = resnet.LAYER_NAMES       # layer1..layer4, as LaMa
FEATURE_NAMES: tuple[str, ...] = ("stem",) + resnet.LAYER_NAMES
# How ||phi_i(x) - phi_i(x_hat)||_2^2 reduces a layer (``loss.pcp_reduction``): "mean" over the
# feature map (LaMa's HRF loss, so layers of different sizes weigh alike) or "sum" per image
# (Eq. 9 as written), then the batch mean.
REDUCTIONS = ("mean", "sum")


def imagenet_normalize(x_BHWC: jax.Array) -> jax.Array:
    """[-1, 1] RGB -> ImageNet-normalised input of a torchvision ResNet."""
    mean = jnp.asarray(IMAGENET_MEAN, x_BHWC.dtype).reshape(1, 1, 1, 3)
    std = jnp.asarray(IMAGENET_STD, x_BHWC.dtype).reshape(1, 1, 1, 3)
    return ((x_BHWC + 1.0) * 0.5 - mean) / std


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """``loss(variables, pred, target) -> scalar``: Eq. 9 over the chosen ResNet layers."""
    model: resnet.ResNet = dataclasses.field(default_factory=resnet.ResNet50Dilated)
    layers: tuple[str, ...] = DEFAULT_LAYERS
    layer_weights: tuple[float, ...] | None = None   # None: every layer weighs 1
    reduction: str = "mean"                          # see REDUCTIONS

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"loss.pcp_reduction={self.reduction!r}: expected one of {list(REDUCTIONS)}")
        bad = [n for n in self.layers if n not in FEATURE_NAMES]
        if bad or not self.layers:
            raise ValueError(f"loss.perceptual_layers: unknown or empty {list(self.layers)}; "
                             f"choose from {list(FEATURE_NAMES)}")
        if self.layer_weights is not None and len(self.layer_weights) != len(self.layers):
            raise ValueError(f"loss.perceptual_layer_weights: {len(self.layer_weights)} weights for "
                             f"{len(self.layers)} layers {list(self.layers)}")

    def features(self, variables: Any, x_BHWC: jax.Array) -> dict[str, jax.Array]:
        frozen = jax.tree.map(jax.lax.stop_gradient, variables)   # never train the ResNet
        feats = self.model.apply(frozen, imagenet_normalize(x_BHWC))
        return {n: feats[n] for n in self.layers}

    def __call__(self, variables: Any, pred_BHWC: jax.Array, target_BHWC: jax.Array) -> jax.Array:
        # Two passes rather than one on concat([pred, target]): the target branch is then a
        # constant for autodiff, so the backward pass runs over the prediction only.
        f_pred = self.features(variables, pred_BHWC)
        f_target = self.features(variables, jax.lax.stop_gradient(target_BHWC))
        weights = self.layer_weights or (1.0,) * len(self.layers)
        total = jnp.zeros((), jnp.float32)
        for name, w in zip(self.layers, weights):
            sq_BHWC = jnp.square(f_pred[name].astype(jnp.float32) - f_target[name].astype(jnp.float32))
            if self.reduction == "sum":
                total = total + w * jnp.mean(jnp.sum(sq_BHWC, axis=(1, 2, 3)))
            else:
                total = total + w * jnp.mean(sq_BHWC)
        return total


def _get(cfg: Any, key: str, default: Any) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def make_perceptual_fn(cfg: Any, *, model: resnet.ResNet | None = None, seed: int = 0
                       ) -> tuple[Any, Callable[[Any, jax.Array, jax.Array], jax.Array]]:
    """Builds ``(variables, fn)`` with ``fn(variables, pred, target) -> scalar`` (Eq. 9).

    ``cfg`` is the whole config (``cfg.loss`` is read) or its ``loss`` section. ``model``
    overrides the network (tests use a narrow ResNet); ``seed`` is for random init only.
    Raises a one-line ValueError on a bad setting or weights file.
    """
    loss_cfg = cfg["loss"] if _has_key(cfg, "loss") else cfg
    path = str(_get(loss_cfg, "perceptual_weights", "") or "")
    random_init = bool(_get(loss_cfg, "perceptual_random_init", False))
    layers = tuple(_get(loss_cfg, "perceptual_layers", DEFAULT_LAYERS))
    layer_weights = _get(loss_cfg, "perceptual_layer_weights", None)
    layer_weights = tuple(float(w) for w in layer_weights) if layer_weights is not None else None
    if model is None:
        dilated = bool(_get(loss_cfg, "perceptual_dilated", True))
        stages = tuple(int(n) for n in _get(loss_cfg, "perceptual_stages", resnet.RESNET50_STAGES))
        width = int(_get(loss_cfg, "perceptual_width", 64))
        if len(stages) != 4 or min(stages) < 1 or width < 1:
            raise ValueError(f"loss.perceptual_stages={stages} / perceptual_width={width}: expected 4 "
                             "stages of >= 1 block and a width >= 1 (ResNet-50: (3, 4, 6, 3), 64)")
        model = resnet.ResNet(stage_sizes=stages, base_width=width,
                              replace_stride_with_dilation=(False, True, True) if dilated else (False,) * 3)
    loss = PerceptualLoss(model=model, layers=layers, layer_weights=layer_weights,
                          reduction=str(_get(loss_cfg, "pcp_reduction", "mean")))

    if path and random_init:
        raise ValueError(f"loss.perceptual_weights={path!r} and loss.perceptual_random_init=True "
                         "contradict each other; set only one")
    if path:
        try:
            variables = resnet.load_resnet50_weights(path, stage_sizes=tuple(model.stage_sizes),
                                                     base_width=model.base_width)
        except (OSError, ValueError) as e:
            raise ValueError(f"loss.perceptual_weights: {e}") from None
        log.info("perceptual loss: ResNet weights from %s, layers %s", path, list(layers))
    elif random_init:
        log.warning("perceptual loss: loss.perceptual_weights is empty and perceptual_random_init=True, "
                    "so the ResNet-50 has RANDOM weights (tests/demo only; not the paper's loss)")
        variables = resnet.random_variables(seed, stage_sizes=tuple(model.stage_sizes),
                                            base_width=model.base_width)
    else:
        raise ValueError("loss.perceptual_weights is empty: give a local torchvision ResNet-50 .npz, "
                         "or set loss.perceptual_random_init=True explicitly (tests/demo only)")
    return variables, loss


def _has_key(cfg: Any, key: str) -> bool:
    try:
        return key in cfg
    except TypeError:
        return hasattr(cfg, key)
