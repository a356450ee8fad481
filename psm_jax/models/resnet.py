"""ResNet-50 feature extractor for the perceptual loss (paper Sec. 3.3, Eq. 9).

Eq. 9 uses the layer outputs ``phi_i`` of a pre-trained ResNet-50 (the high-receptive-field
perceptual loss of LaMa). This is a Flax linen ResNet with the *torchvision* layout, so that a
torchvision-format state dict converts name for name:

* stem: 7x7/2 conv (no bias), BatchNorm, ReLU, 3x3/2 max-pool (padding 1, padded with -inf);
* ``layer1..layer4``: Bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4). The stride sits on the
  **3x3** conv (torchvision's "ResNet v1.5"), and the first block of a stage has a 1x1 conv + BN
  projection shortcut (``downsample``) whenever its stride or channel count changes;
* BatchNorm is *frozen*: it always uses the running statistics (inference-mode affine
  ``(x - mean) / sqrt(var + 1e-5) * scale + bias``). The network is never trained here.
* ``replace_stride_with_dilation`` (as torchvision's option of that name): a stage marked True
  keeps stride 1 and multiplies the dilation instead. Its first block keeps the dilation of the
  previous stage; the remaining blocks use the new one. With ``(False, True, True)`` layer3 and
  layer4 stay at 1/8 of the input resolution -- the "dilated ResNet-50" of LaMa's loss.

The module returns a dict of features: ``stem`` (after the stem ReLU, before the max-pool) and
``layer1..layer4``. Parameters live in ``params`` (conv ``kernel``; BN ``scale``/``bias``) and the BN
running statistics in ``batch_stats`` (``mean``/``var``), Flax's usual BatchNorm layout.

Weights: :func:`from_torchvision` converts a torchvision state dict (name -> numpy array,
PyTorch OIHW layout) and :func:`load_resnet50_weights` reads one from disk. No weights are
downloaded, ever.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psm_jax.npz_io import load_npz

RESNET50_STAGES: tuple[int, ...] = (3, 4, 6, 3)
LAYER_NAMES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
BN_EPS = 1e-5          # torch.nn.BatchNorm2d default; the stats were estimated with it
EXPANSION = 4          # Bottleneck output channels = 4 * width

# torchvision's init for convs: kaiming normal, fan_out, ReLU gain. Only matters for
# random-init (tests / demo); real use loads weights.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_NPZ_HINT = ("convert it once to .npz with torch installed: python -c \"import sys,torch,numpy as np; "
             "sd=torch.load(sys.argv[1],map_location='cpu',weights_only=True); "
             "np.savez(sys.argv[2],**{k:v.numpy() for k,v in sd.items()})\" in.pth out.npz")


def _conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, name: str | None = None):
    # torchvision pads every conv by dilation * (kernel // 2): "same" size at stride 1.
    pad = dilation * (kernel // 2)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                   use_bias=False, kernel_init=_conv_init, name=name)


def _frozen_bn(name: str):
    # use_running_average=True always: frozen (inference-mode) BatchNorm, see module docstring.
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=BN_EPS, name=name)


class Bottleneck(nn.Module):
    """torchvision Bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1, + shortcut, ReLU."""
    width: int                 # channels of the 1x1/3x3 convs; output is EXPANSION * width
    stride: int = 1            # on the 3x3 conv (v1.5) and on the projection shortcut
    dilation: int = 1          # of the 3x3 conv
    downsample: bool = False   # projection shortcut (1x1 conv + BN)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        h = nn.relu(_frozen_bn("bn1")(_conv(self.width, 1, name="conv1")(x_BHWC)))
        h = _conv(self.width, 3, self.stride, self.dilation, name="conv2")(h)
        h = nn.relu(_frozen_bn("bn2")(h))
        h_BhwO = _frozen_bn("bn3")(_conv(self.width * EXPANSION, 1, name="conv3")(h))
        shortcut = x_BHWC
        if self.downsample:
            shortcut = _conv(self.width * EXPANSION, 1, self.stride, name="downsample_conv")(x_BHWC)
            shortcut = _frozen_bn("downsample_bn")(shortcut)
        return nn.relu(h_BhwO + shortcut)


def stage_plan(stage_sizes: Sequence[int], base_width: int,
               replace_stride_with_dilation: Sequence[bool]) -> list[list[dict[str, Any]]]:
    """Per stage, per block: the Bottleneck kwargs, following torchvision's _make_layer rules."""
    if len(stage_sizes) != 4 or len(replace_stride_with_dilation) != 3:
        raise ValueError("ResNet: need 4 stage sizes and 3 replace_stride_with_dilation flags, got "
                         f"{tuple(stage_sizes)} and {tuple(replace_stride_with_dilation)}")
    plan, in_ch, dilation = [], base_width, 1
    for i, n_blocks in enumerate(stage_sizes):
        width = base_width * 2 ** i
        stride = 1 if i == 0 else 2
        prev_dilation = dilation
        if i > 0 and replace_stride_with_dilation[i - 1]:
            dilation *= stride
            stride = 1
        blocks = []
        for j in range(n_blocks):
            first = j == 0
            blocks.append(dict(
                width=width, stride=stride if first else 1,
                # the first block keeps the previous stage's dilation (torchvision)
                dilation=prev_dilation if first else dilation,
                downsample=first and (stride != 1 or in_ch != width * EXPANSION)))
            in_ch = width * EXPANSION
        plan.append(blocks)
    return plan


class ResNet(nn.Module):
    """Bottleneck ResNet (torchvision layout) returning stem and layer1..4 features."""
    stage_sizes: Sequence[int] = RESNET50_STAGES
    base_width: int = 64
    # torchvision's option for layer2..layer4; LaMa's dilated ResNet-50 is (False, True, True).
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> dict[str, jax.Array]:
        feats: dict[str, jax.Array] = {}
        h = _conv(self.base_width, 7, 2, name="conv1")(x_BHWC)
        h_Bh2w2C = nn.relu(_frozen_bn("bn1")(h))
        feats["stem"] = h_Bh2w2C
        h = nn.max_pool(h_Bh2w2C, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        plan = stage_plan(self.stage_sizes, self.base_width, self.replace_stride_with_dilation)
        for i, blocks in enumerate(plan):
            for j, kw in enumerate(blocks):
                h = Bottleneck(**kw, name=f"layer{i + 1}_{j}")(h)
            feats[LAYER_NAMES[i]] = h
        return feats


ResNet50 = functools.partial(ResNet, stage_sizes=RESNET50_STAGES, base_width=64)
ResNet50Dilated = functools.partial(ResNet50, replace_stride_with_dilation=(False, True, True))


# ---------------------------------------------------------------------------------------------
# torchvision <-> Flax conversion
# ---------------------------------------------------------------------------------------------
# Module-level renames; the leaf renames are in _LEAVES. Flax "layer1_0/downsample_conv" is
# torchvision "layer1.0.downsample.0", "downsample_bn" is "downsample.1".
_MODULE_TO_TORCH = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_LEAVES = {  # (collection, flax leaf) -> torch leaf
    ("params", "kernel"): "weight",      # conv
    ("params", "scale"): "weight",       # BN gamma
    ("params", "bias"): "bias",          # BN beta
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Present in torchvision state dicts, not used by a feature extractor: dropped on purpose.
_IGNORED_EXACT = {"fc.weight", "fc.bias"}
_IGNORED_SUFFIX = ".num_batches_tracked"


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
    parts = []
    for p in path[:-1]:
        if p.startswith("layer"):          # "layer3_5" -> "layer3.5"
            parts.extend(p.split("_"))
        else:
            parts.append(_MODULE_TO_TORCH.get(p, p))
    parts.append(_LEAVES[(collection, path[-1])])
    return ".".join(parts)


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x     # HWIO -> OIHW


def _from_torch_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x     # OIHW -> HWIO


def variable_shapes(stage_sizes: Sequence[int] = RESNET50_STAGES,
                    base_width: int = 64) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch name -> (collection, flax path, flax shape) for every variable of the network.

    Shapes do not depend on dilation, so the converter does not need it.
    """
    model = ResNet(stage_sizes=tuple(stage_sizes), base_width=base_width)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    out = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes[collection])[0]:
            keys = tuple(k.key for k in path)
            out[_torch_name(collection, keys)] = (collection, keys, tuple(leaf.shape))
    return out


def random_variables(seed: int = 0, *, stage_sizes: Sequence[int] = RESNET50_STAGES,
                     base_width: int = 64) -> dict[str, Any]:
    """Random weights (torchvision's init: kaiming-normal fan_out convs, identity BatchNorm).

    For tests and demos only. Drawn with numpy: ``model.init`` of a ResNet-50 compiles for
    ~10 s on a small CPU, this takes a fraction of a second.
    """
    rng = np.random.default_rng(seed)
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for collection, path, shape in variable_shapes(stage_sizes, base_width).values():
        if path[-1] == "kernel":   # HWIO; fan_out = O * kh * kw
            std = np.sqrt(2.0 / (shape[3] * shape[0] * shape[1]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        elif path[-1] in ("scale", "var"):
            value = np.ones(shape, np.float32)
        else:                      # BN bias, running mean
            value = np.zeros(shape, np.float32)
        node = variables[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(value)
    return variables


def from_torchvision(state_dict: Mapping[str, Any], *, stage_sizes: Sequence[int] = RESNET50_STAGES,
                     base_width: int = 64) -> dict[str, Any]:
    """Converts a torchvision ResNet state dict (name -> array, OIHW) to Flax variables.

    ``fc.*`` and ``*.num_batches_tracked`` are ignored on purpose. Any other unknown key, any
    missing key and any shape mismatch raises a ValueError that lists them all.
    """
    spec = variable_shapes(stage_sizes, base_width)
    given = {k: v for k, v in state_dict.items()
             if k not in _IGNORED_EXACT and not k.endswith(_IGNORED_SUFFIX)}
    missing = sorted(set(spec) - set(given))
    unexpected = sorted(set(given) - set(spec))
    bad_shape = []
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for name, (collection, path, flax_shape) in spec.items():
        if name not in given:
            continue
        arr = np.asarray(given[name])
        want = _to_torch_layout(np.empty(flax_shape, dtype=np.uint8)).shape
        if arr.shape != want:
            bad_shape.append(f"{name}: got {arr.shape}, expected {want}")
            continue
        node = variables[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(_from_torch_layout(arr), dtype=jnp.float32)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if bad_shape:
        problems.append(f"shape mismatches ({len(bad_shape)}): {'; '.join(bad_shape[:8])}"
                        + (" ..." if len(bad_shape) > 8 else ""))
    if problems:
        raise ValueError("ResNet state dict does not match the torchvision layout "
                         f"(stages {tuple(stage_sizes)}, width {base_width}): " + " | ".join(problems))
    return variables


def to_torchvision(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torchvision` (without ``fc.*``); used by the round-trip test."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            keys = tuple(k.key for k in path)
            out[_torch_name(collection, keys)] = _to_torch_layout(np.asarray(leaf))
    return out


def load_resnet50_weights(path: str | os.PathLike, *, stage_sizes: Sequence[int] = RESNET50_STAGES,
                          base_width: int = 64) -> dict[str, Any]:
    """Reads a torchvision ResNet-50 state dict from ``.npz`` (torch name -> array) or ``.pth``.

    torch is not a dependency. A ``.pth`` is read only if torch happens to be importable;
    otherwise convert it once, on a machine with torch, with::

        python -c "import sys,torch,numpy as np; sd=torch.load(sys.argv[1],map_location='cpu',weights_only=True); np.savez(sys.argv[2],**{k:v.numpy() for k,v in sd.items()})" resnet50.pth resnet50.npz
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ResNet-50 weights file not found: {path}")
    if path.endswith(".npz"):
        state_dict = load_npz(path, "a torchvision ResNet-50 state dict (torch name -> array)")
    elif path.endswith((".pth", ".pt")):
        try:
            import torch  # noqa: PLC0415  (optional; never a dependency)
        except ImportError:
            raise ValueError(f"{path}: reading .pth needs torch, which is not installed; "
                             + _NPZ_HINT) from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = {k: v.detach().cpu().numpy() for k, v in sd.items()}
    else:
        raise ValueError(f"{path}: expected a .npz (torch name -> array) or .pth ResNet-50 state dict")
    try:
        return from_torchvision(state_dict, stage_sizes=stage_sizes, base_width=base_width)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
