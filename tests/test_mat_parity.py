"""Numerical parity of the StyleGAN2/MAT blocks with MAT's PyTorch code (golden cases, /work/shared/golden/README.md).

One test id per golden case and precision. Cases are read from `$PSM_GOLDEN_DIR` (default
`<shared>/golden/mat`) and dispatched only on the JSON's `class`/`function`, `ctor_kwargs`, `call` and `runner`,
so other directories of cases of the same MAT classes work unchanged. An unknown class, function, runner or
constructor argument is a failure. Every `out/`, `grad/` (float32 ids) and `f64/` (float64 ids) key of a case
must be produced and compared: |got - want| <= atol + rtol |want| with the case's own tolerances.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_path, shared_dir
from psm_jax import losses
from psm_jax.models import discriminator as disc
from psm_jax.models import layers, mapping, mat_blocks, ops
from psm_jax.models.convert import ConversionSpec, flax_to_torch, torch_to_flax, torch_to_flax_layout

GOLDEN_ENV = "PSM_GOLDEN_DIR"


def golden_dir() -> Path:
    return Path(os.environ.get(GOLDEN_ENV) or shared_dir() / "golden" / "mat")


def _case_params() -> list:
    root = golden_dir()
    if not root.is_dir():
        return [pytest.param(None, None, id="golden-dir-missing")]
    params = []
    for path in sorted(root.glob("*.json")):
        if path.name == "index.json":
            continue
        # Double-backprop and gradient cases take several seconds to compile on a 2-core CPU.
        try:
            slow = json.loads(path.read_text()).get("runner") in ("grad", "disc_r1")
        except (OSError, ValueError):
            slow = False  # an unreadable case fails in the test itself, with the reason
        marks = [pytest.mark.slow] if slow else []
        params += [pytest.param(path.stem, prec, id=f"{path.stem}-{prec}", marks=marks) for prec in ("f32", "f64")]
    return params


# ----------------------------------------------------------------------------- building modules from MAT kwargs


class _Kwargs:
    """Reads MAT constructor kwargs; `done()` fails on any argument nobody consumed."""

    def __init__(self, cls: str, kwargs: dict[str, Any]):
        self.cls, self.left = cls, dict(kwargs)

    def get(self, name: str, default: Any = None) -> Any:
        return self.left.pop(name, default)

    def drop(self, *names: str) -> None:
        """Arguments the Flax modules infer from their inputs (in_channels, style_dim)."""
        for n in names:
            self.left.pop(n, None)

    def done(self) -> None:
        assert not self.left, f"{self.cls}: unhandled constructor kwargs {self.left}"


def _conv_layer(k: _Kwargs) -> layers.Conv2dLayer:
    k.drop("in_channels")
    return layers.Conv2dLayer(k.get("out_channels"), k.get("kernel_size"), use_bias=k.get("bias", True),
                              activation=k.get("activation", "linear"), up=k.get("up", 1), down=k.get("down", 1),
                              conv_clamp=k.get("conv_clamp"))


def _decoder(block: type, first_res: int) -> Callable[[_Kwargs], Any]:
    def build(k: _Kwargs):
        k.drop("in_channels", "style_dim")
        return block(k.get("out_channels"), res=k.get("res", first_res), first_res=first_res,
                     img_channels=k.get("img_channels", 3), activation=k.get("activation", "lrelu"),
                     use_noise=k.get("use_noise", True), demodulate=k.get("demodulate", True))
    return build


def _mapping(k: _Kwargs) -> mapping.MappingNetwork:
    assert k.get("c_dim", 0) == 0, "class-conditional mapping is not ported"
    return mapping.MappingNetwork(k.get("z_dim"), k.get("w_dim"), k.get("num_ws"), k.get("num_layers", 8),
                                  lr_multiplier=k.get("lr_multiplier", 0.01), w_avg_beta=k.get("w_avg_beta", 0.995))


def _discriminator(k: _Kwargs) -> disc.Discriminator:
    assert k.get("c_dim", 0) == 0, "class-conditional discriminator is not ported"
    return disc.Discriminator(k.get("img_resolution"), k.get("img_channels", 3), k.get("channel_base", 32768),
                              k.get("channel_max", 512), k.get("mbstd_group_size", 4), k.get("mbstd_num_channels", 1))


def _in_out(block: type) -> Callable[[_Kwargs], Any]:
    def build(k: _Kwargs):
        k.drop("in_channels")
        return block(k.get("out_channels"), activation=k.get("activation", "lrelu"))
    return build


def _to_style(k: _Kwargs) -> mat_blocks.ToStyle:
    k.drop("in_channels", "drop_rate")  # MAT's ToStyle never applies its dropout
    return mat_blocks.ToStyle(k.get("out_channels"), activation=k.get("activation", "lrelu"))


def _fc(k: _Kwargs) -> layers.FullyConnected:
    k.drop("in_features")
    return layers.FullyConnected(k.get("out_features"), use_bias=k.get("bias", True), bias_init=k.get("bias_init", 0),
                                 lr_multiplier=k.get("lr_multiplier", 1), activation=k.get("activation", "linear"))


def _modconv(k: _Kwargs) -> layers.ModulatedConv2d:
    k.drop("in_channels", "style_dim")
    return layers.ModulatedConv2d(k.get("out_channels"), k.get("kernel_size"), demodulate=k.get("demodulate", True),
                                  up=k.get("up", 1))


def _style_conv(k: _Kwargs) -> layers.StyleConv:
    k.drop("in_channels", "style_dim")
    return layers.StyleConv(k.get("out_channels"), k.get("kernel_size", 3), k.get("resolution"), up=k.get("up", 1),
                            use_noise=k.get("use_noise", True), activation=k.get("activation", "lrelu"),
                            demodulate=k.get("demodulate", True))


def _to_rgb(k: _Kwargs) -> layers.ToRGB:
    k.drop("in_channels", "style_dim")
    assert k.get("demodulate", False) is False, "ToRGB never demodulates"
    return layers.ToRGB(k.get("out_channels"), k.get("kernel_size", 1))


BM, MAT = "networks.basic_module.", "networks.mat."
MODULE_BUILDERS: dict[str, Callable[[_Kwargs], Any]] = {
    BM + "FullyConnectedLayer": _fc,
    BM + "Conv2dLayer": _conv_layer,
    BM + "ModulatedConv2d": _modconv,
    BM + "StyleConv": _style_conv,
    BM + "ToRGB": _to_rgb,
    BM + "MappingNet": _mapping,
    BM + "MinibatchStdLayer": lambda k: disc.MinibatchStd(k.get("group_size"), k.get("num_channels", 1)),
    BM + "DisFromRGB": _in_out(disc.DisFromRGB),
    BM + "DisBlock": _in_out(disc.DisBlock),
    BM + "Discriminator": _discriminator,
    BM + "DecBlockFirstV2": _decoder(mat_blocks.DecBlockFirstV2, mat_blocks.BASIC_FIRST_RES),
    BM + "DecBlock": _decoder(mat_blocks.DecBlock, mat_blocks.BASIC_FIRST_RES),
    MAT + "EncFromRGB": _in_out(mat_blocks.EncFromRGB),
    MAT + "ConvBlockDown": _in_out(mat_blocks.ConvBlockDown),
    MAT + "ToStyle": _to_style,
    MAT + "DecBlockFirstV2": _decoder(mat_blocks.DecBlockFirstV2, mat_blocks.MAT_FIRST_RES),
    MAT + "DecBlock": _decoder(mat_blocks.DecBlock, mat_blocks.MAT_FIRST_RES),
}

# function -> (callable, {input name: torch layout of a non-activation input}); 4-D activations are NCHW.
UPFIRDN, RESAMPLE = "torch_utils.ops.upfirdn2d.", "torch_utils.ops.conv2d_resample."
FUNCTIONS: dict[str, tuple[Callable, dict[str, str]]] = {
    UPFIRDN + "upfirdn2d": (ops.upfirdn2d, {"f": "identity"}),
    UPFIRDN + "upsample2d": (ops.upsample2d, {"f": "identity"}),
    UPFIRDN + "downsample2d": (ops.downsample2d, {"f": "identity"}),
    RESAMPLE + "conv2d_resample": (ops.conv2d_resample, {"w": "conv", "f": "identity"}),
    BM + "get_style_code": (mat_blocks.style_code, {}),
}
MODCONV_MODULES = (layers.ModulatedConv2d, layers.StyleConv, layers.ToRGB)
RUNNERS = ("module", "function", "grad", "disc_r1", "mapping_train")
# Keyword arguments MAT accepts that only select its torch implementation or restate the defaults.
_NEUTRAL_FN_KWARGS = {"flip_filter": False, "flip_weight": True, "impl": "ref"}


# ----------------------------------------------------------------------------- layouts


def _to_nhwc(name: str, a: np.ndarray, layouts: dict[str, str]) -> np.ndarray:
    if name in layouts:
        return torch_to_flax_layout(a, layouts[name])
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _to_nchw(a) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


# ----------------------------------------------------------------------------- running one case


def _call_args(spec: dict) -> tuple[list, list[str]]:
    """Positional arg templates from `call.args`: an input name, ("dict", prefix) or None (MAT's unused c)."""
    args = []
    for a in spec["call"]["args"]:
        if a is None:
            continue  # the unused class label `c` (README: null stands for it); our modules take no label
        if isinstance(a, dict):
            assert set(a) == {"dict"}, f"unknown argument form {a}"
            args.append(("dict", a["dict"]))
        else:
            args.append(a)
    return args, [k for k in spec["outputs"]]


def _assemble(arg_templates: list, inputs: dict[str, Any]) -> list:
    out = []
    for a in arg_templates:
        if isinstance(a, tuple):
            prefix = a[1] + "."
            out.append({int(k[len(prefix):]): v for k, v in inputs.items() if k.startswith(prefix)})
        else:
            out.append(inputs[a])
    return out


def _as_tuple(y) -> tuple:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def build_module(spec: dict):
    cls = spec.get("class")
    assert cls in MODULE_BUILDERS, f"unknown class {cls!r}"
    ctor = _Kwargs(cls, spec.get("ctor_kwargs", {}))
    module = MODULE_BUILDERS[cls](ctor)
    ctor.done()
    return module


def run_case(spec: dict, arrays: dict[str, np.ndarray], dtype, impl: str | None = None) -> dict[str, np.ndarray]:
    """Runs one golden case under jax.jit; returns {out/..., grad/...} in torch layout. `impl` selects the
    modulated conv implementation of a module that has one (default: the module's default)."""
    runner = spec.get("runner")
    assert runner in RUNNERS, f"unknown runner {runner!r}"
    kwargs = dict(spec["call"]["kwargs"])
    arg_templates, out_keys = _call_args(spec)
    input_names = [k[3:] for k in arrays if k.startswith("in/") and not k.startswith("in/cotangent.")]

    if runner == "function":
        fname = spec.get("function")
        assert fname in FUNCTIONS, f"unknown function {fname!r}"
        fn, layouts = FUNCTIONS[fname]
        for k, v in _NEUTRAL_FN_KWARGS.items():
            if k in kwargs:
                assert kwargs.pop(k) == v, f"{fname}: unsupported {k}={v!r}"
        inputs = {n: jnp.asarray(_to_nhwc(n, arrays["in/" + n], layouts), dtype) for n in input_names}
        y = jax.jit(lambda i: fn(*_assemble(arg_templates, i), **kwargs))(inputs)
        return {k: _to_nchw(v) for k, v in zip(out_keys, _as_tuple(y), strict=True)}

    module = build_module(spec)
    if impl is not None:
        module = module.clone(impl=impl)
    inputs = {n: jnp.asarray(_to_nhwc(n, arrays["in/" + n], {}), dtype) for n in input_names}
    state_dict = {k: v for k, v in arrays.items() if "/" not in k}
    r1_gamma = kwargs.pop("r1_gamma", None)
    assert (r1_gamma is not None) == (runner == "disc_r1"), "r1_gamma belongs to the disc_r1 runner"
    spec_conv = ConversionSpec.from_module(module, *_assemble(arg_templates, inputs), **kwargs)
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), torch_to_flax(spec_conv, state_dict))
    rngs = {"noise": jax.random.key(0)}

    def apply(params, inp, **extra):
        return module.apply({**variables, "params": params}, *_assemble(arg_templates, inp), rngs=rngs,
                            **kwargs, **extra)

    def param_grads(grads) -> dict[str, np.ndarray]:
        named = flax_to_torch(spec_conv, {"params": grads}, collections=["params"], include_filters=False)
        return {"grad/param/" + k: v for k, v in named.items()}

    params = variables.get("params", {})
    if runner == "module":
        y = jax.jit(apply)(params, inputs)
        return {k: _to_nchw(v) for k, v in zip(out_keys, _as_tuple(y), strict=True)}

    if runner == "mapping_train":
        ws, new_vars = jax.jit(lambda p, i: apply(p, i, update_w_avg=True, mutable=["buffers"]))(params, inputs)
        assert out_keys == ["out/ws", "out/w_avg_after"], out_keys
        return {"out/ws": np.asarray(ws), "out/w_avg_after": np.asarray(new_vars["buffers"]["w_avg"])}

    if runner == "grad":
        fwd_keys = [k for k in out_keys if k.startswith("out/") and k != "out/loss"]
        cot = {k: jnp.asarray(_to_nhwc(k, arrays["in/cotangent." + k[4:]], {}), dtype) for k in fwd_keys}
        wrt = spec["call"]["grad_wrt"]

        def loss_fn(p, diff_inputs):
            ys = _as_tuple(apply(p, {**inputs, **diff_inputs}))
            return sum(jnp.sum(y * cot[k]) for k, y in zip(fwd_keys, ys, strict=True)), ys

        (loss, ys), (g_params, g_inputs) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
            params, {n: inputs[n] for n in wrt})
        result = {k: _to_nchw(y) for k, y in zip(fwd_keys, ys, strict=True)}
        result["out/loss"] = np.asarray(loss)
        result.update({"grad/" + n: _to_nchw(g) for n, g in g_inputs.items()})
        result.update(param_grads(g_params))
        return result

    # disc_r1: R1 on the discriminator, parameter gradients by double backprop.
    images, masks = (inputs[a] for a in arg_templates)

    def r1_terms(p):
        logits_fn = lambda im: module.apply({"params": p}, im, masks)  # noqa: E731
        penalty = losses.r1_penalty(logits_fn, images)
        loss_dr1 = penalty * (r1_gamma / 2)
        return jnp.mean(loss_dr1), (logits_fn(images), penalty, loss_dr1)

    def r1_all(p):
        (_, (logits, penalty, loss_dr1)), g = jax.value_and_grad(r1_terms, has_aux=True)(p)
        r1_grads = jax.grad(lambda im: jnp.sum(module.apply({"params": p}, im, masks)))(images)
        return logits, r1_grads, penalty, loss_dr1, g

    logits, r1_grads, penalty, loss_dr1, g = jax.jit(r1_all)(params)
    result = {"out/logits": np.asarray(logits), "out/r1_grads": _to_nchw(r1_grads),
              "out/r1_penalty": np.asarray(penalty), "out/loss_Dr1": np.asarray(loss_dr1)}
    result.update(param_grads(g))
    return result


# ----------------------------------------------------------------------------- the test


def _compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float, key: str) -> str | None:
    got = np.asarray(got, np.float64)
    if got.shape != want.shape:
        return f"{key}: shape {got.shape} != golden {want.shape}"
    excess = np.abs(got - want) - (atol + rtol * np.abs(want))
    if np.all(excess <= 0):
        return None
    i = np.unravel_index(np.argmax(excess), want.shape)
    return (f"{key}: {int(np.sum(excess > 0))}/{want.size} elements out of tolerance (atol={atol}, rtol={rtol}); "
            f"worst at {i}: got {got[i]!r}, want {want[i]!r}")


@pytest.mark.parametrize("case,precision", _case_params())
def test_mat_parity(case: str | None, precision: str | None) -> None:
    root = require_path(golden_dir(), f"golden MAT cases (${GOLDEN_ENV})")
    if case is None:
        pytest.fail(f"{root} exists but was not found at collection time")
    spec = json.loads((root / f"{case}.json").read_text())
    with np.load(root / spec.get("npz", f"{case}.npz")) as z:
        npz = {k: z[k] for k in z.files}
    golden_keys = sorted(k for k in npz if k.startswith(("out/", "grad/")))
    f64_keys = sorted(k for k in npz if k.startswith("f64/"))
    other = [k for k in npz if "/" in k and not k.startswith(("in/", "out/", "grad/", "f64/"))]
    assert not other, f"unknown npz key prefixes: {other}"
    assert f64_keys == sorted("f64/" + k for k in golden_keys), "f64/ keys do not mirror out/ and grad/"

    x64 = precision == "f64"
    # Every modulated-conv implementation is checked on the single-layer cases against the strict float64
    # reference (tests/test_layers.py compares them with each other in float32); blocks use the default.
    impls = [None]
    if x64 and spec.get("runner") != "function" and isinstance(build_module(spec), MODCONV_MODULES):
        impls = list(layers.MODCONV_IMPLS)
    tolerances = spec["tolerance_float64" if x64 else "tolerance"]
    errors = []
    for impl in impls:
        with jax.enable_x64(x64), jax.default_matmul_precision("highest"):
            got = run_case(spec, npz, jnp.float64 if x64 else jnp.float32, impl)
        assert sorted(got) == golden_keys, f"produced {sorted(got)} but the case holds {golden_keys}"
        for key in golden_keys:
            tol = tolerances[key]
            want = npz[("f64/" if x64 else "") + key].astype(np.float64)
            if not x64:
                assert got[key].dtype == np.float32, f"{key} computed in {got[key].dtype}"
            err = _compare(got[key], want, tol["atol"], tol["rtol"], key)
            if err:
                errors.append(f"[impl={impl or 'default'}] {err}")
    assert not errors, "\n".join(errors)
