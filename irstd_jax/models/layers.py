"""Building blocks shared by the model families, with PyTorch semantics.

The official GaNet and GGL-Net code is PyTorch. To be weight-compatible (and to
train the same way), convolutions pad explicitly as torch does, batch norm keeps
torch's running statistics, max pooling routes its gradient to the first
maximum, and bilinear resizing offers both of torch's `align_corners`
conventions. Every model is NHWC.

Module attribute names mirror the official torch module names, so that
`irstd_jax.convert` maps a torch state dict onto a model by name alone.

Plain and fast kernels: every layer here is written in plain `jax.lax` /
`jnp` terms, and that formulation defines the semantics. Some layers also have
a faster formulation for XLA:CPU in `cpu_kernels` (few-channel convolutions,
bias gradients, batch-norm statistics and backward pass, max pooling,
resizing), taken when `fast_kernels()` is true. The switch is one setting:

  use_fast_kernels(True | False | None)  # process-wide; None = auto
  with use_fast_kernels(False): ...      # inside the block only

Auto (the default) is on for the CPU backend, where the kernels were measured
faster, and off elsewhere until they are measured there. Models also take a
`fast_kernels` option (None: follow the switch), so that a config can set it.
The switch is read when a layer is traced, so under `jax.jit` it is a static
choice: a function already traced keeps its kernels (change the model option,
which is part of the model's static structure, or trace anew). Both paths give
the same outputs and gradients up to float rounding. The plain path supports
every JAX transformation, forward-mode autodiff (`jax.jvp`, `jax.linearize`,
`jax.jacfwd`) included; the fast kernels define their gradients with
`jax.custom_vjp` and support reverse mode only.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irstd_jax.models import cpu_kernels

# The fast-kernel switch: True, False, or None for auto (on for the CPU backend).
_FAST_KERNELS: bool | None = None


def fast_kernels() -> bool:
  """Whether layers take the `cpu_kernels` formulation (read at trace time)."""
  if _FAST_KERNELS is None:
    return jax.default_backend() == 'cpu'
  return _FAST_KERNELS


class use_fast_kernels:  # pylint: disable=invalid-name
  """Sets the fast-kernel switch: True, False or None (auto, the default).

  Called plainly it sets the switch for the process; used as a context
  manager it restores the previous setting on exit. Layers read it when
  traced, and `jax.jit` caches a trace by function, not by this setting: a
  function jitted and called before the change keeps its kernels.
  """

  def __init__(self, enabled: bool | None):
    global _FAST_KERNELS
    enabled = check_fast_kernels(enabled)
    self._previous = _FAST_KERNELS
    _FAST_KERNELS = enabled

  def __enter__(self) -> 'use_fast_kernels':
    return self

  def __exit__(self, *exc) -> None:
    global _FAST_KERNELS
    _FAST_KERNELS = self._previous


def check_fast_kernels(value) -> bool | None:
  """`value` as a switch setting (True, False or None), or a ValueError."""
  if value is not None and not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'fast_kernels must be True, False or None (auto), got {value!r}.')
  return None if value is None else bool(value)


def fast_kernels_option(option: bool | None):
  """The context of a model's `fast_kernels` option: None follows the switch."""
  return contextlib.nullcontext() if option is None else use_fast_kernels(option)


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# ---------------------------------------------------------------------------
# Initialisers: torch's distributions, drawn on the host.

def _host_or_traced(host_sample, traced_sample):
  """An initializer that draws on the host unless it runs under a trace.

  Eager `jax.random` compiles one XLA program per parameter shape, which made
  building a model slow. A numpy generator seeded by the key draws the same
  values every time (on every backend) without compiling anything. Under a
  trace (`jax.jit`, `nnx.eval_shape`, `nnx.vmap`) the key has no value, so
  `jax.random` is used there.
  """

  def init(key, shape, dtype=jnp.float32):
    if isinstance(key, jax.core.Tracer):
      return traced_sample(key, shape, dtype)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    values = host_sample(np.random.default_rng(seed), tuple(shape))
    return jnp.asarray(values.astype(np.dtype(dtype)))

  return init


def uniform_init(bound: float):
  """U(-bound, bound), as torch's default conv / linear init."""
  return _host_or_traced(
      lambda rng, shape: rng.uniform(-bound, bound, shape),
      lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound))


def normal_init(std: float):
  """N(0, std^2), untruncated, as torch's `normal_` / `kaiming_normal_`."""
  return _host_or_traced(
      lambda rng, shape: rng.normal(0.0, std, shape),
      lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype))


def _torch_uniform_init(fan_in: int):
  """torch's default conv / linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return uniform_init(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


_NHWC = ('NHWC', 'HWIO', 'NHWC')

# ---------------------------------------------------------------------------
# Convolution and linear layers.

class _Conv(nnx.Conv):
  """`nnx.Conv` (NHWC, explicit padding) with torch's conv semantics.

  With fast kernels, few-channel inputs take `cpu_kernels.stencil_conv` and
  the bias is added by `cpu_kernels.add_channel_bias`.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    fast = fast_kernels()
    if fast and cpu_kernels.stencil_applies(self.in_features, self.feature_group_count,
                                            self.strides, self.kernel_dilation):
      y = cpu_kernels.stencil_conv(x, kernel, tuple(map(tuple, self.padding)))
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, self.strides, self.padding, rhs_dilation=self.kernel_dilation,
          dimension_numbers=_NHWC, feature_group_count=self.feature_group_count,
          precision=self.precision)
    if bias is None:
      return y
    return cpu_kernels.add_channel_bias(y, bias) if fast else y + bias


def Conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: bool = True,
    *,
    rngs: nnx.Rngs,
    kernel_init=None,
    bias_init=None,
) -> nnx.Conv:
  """An `nnx.Conv` that behaves as `torch.nn.Conv2d` with the same arguments.

  Padding is explicit and symmetric: XLA's 'SAME' pads asymmetrically at
  stride 2, which would not match torch. The init follows torch's default
  unless `kernel_init` / `bias_init` (flax initializers) are given, for models
  whose official code re-initialises (e.g. kaiming normal).
  """
  kh, kw = _pair(kernel_size)
  ph, pw = _pair(padding)
  fan_in = in_channels // groups * kh * kw
  return _Conv(
      in_channels,
      out_channels,
      (kh, kw),
      strides=_pair(stride),
      padding=((ph, ph), (pw, pw)),
      kernel_dilation=_pair(dilation),
      feature_group_count=groups,
      use_bias=bias,
      kernel_init=kernel_init or _torch_uniform_init(fan_in),
      bias_init=bias_init or _torch_uniform_init(fan_in),
      rngs=rngs,
  )


def Linear(in_features: int, out_features: int, bias: bool = True, *,
           rngs: nnx.Rngs) -> nnx.Linear:
  """An `nnx.Linear` initialised as `torch.nn.Linear`."""
  return nnx.Linear(
      in_features,
      out_features,
      use_bias=bias,
      kernel_init=_torch_uniform_init(in_features),
      bias_init=_torch_uniform_init(in_features),
      rngs=rngs,
  )


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def compute_dtype(dtype) -> np.dtype:
  """The models' `dtype` option as a numpy dtype; None means float32."""
  if dtype is None:
    return np.dtype(np.float32)
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    resolved = None
  if resolved is None or resolved.name not in COMPUTE_DTYPES:
    raise ValueError(f'dtype={dtype!r} is not a compute dtype; use one of '
                     f'{COMPUTE_DTYPES} (None: float32).')
  return resolved


def set_compute_dtype(model: nnx.Module, dtype) -> None:
  """Mixed precision: every Conv / Linear of `model` computes in `dtype`.

  Flax casts the inputs and the (float32) parameters to a layer's `dtype`
  inside the op, so parameters, their gradients and the optimizer state stay
  float32; batch norm (`BatchNorm2d`) keeps float32 statistics by itself.
  """
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (nnx.Conv, nnx.Linear)):
      module.dtype = dtype


# ---------------------------------------------------------------------------
# Batch norm.

def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Train-mode batch norm: (x - mean) / sqrt(var + eps) * scale + bias.

  Statistics over all axes but the last; returns (y, mean, var). The
  variance is two-pass and biased, as torch normalises. With fast kernels,
  `cpu_kernels.batch_norm_train` (the same formula, a closed-form backward).
  """
  if fast_kernels():
    return cpu_kernels.batch_norm_train(x, scale, bias, epsilon)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  xhat = (x - mean) * jax.lax.rsqrt(var + epsilon)
  return xhat * scale + bias, mean, var


class BatchNorm2d(nnx.BatchNorm):
  """Batch norm with `torch.nn.BatchNorm2d`'s running statistics.

  Normalisation in train mode uses the biased batch variance (as torch and flax
  both do), but the running variance is updated with the *unbiased* one, with
  torch momentum 0.1. Without this, a model trained here would drift from one
  trained with the official code once evaluated with running statistics.
  Under `jax.jit` with a sharded batch the statistics are over the global batch.
  """

  def __init__(self, num_features: int, eps: float = 1e-5,
               momentum: float = 0.1, *, rngs: nnx.Rngs):
    super().__init__(num_features, momentum=1.0 - momentum, epsilon=eps,
                     use_fast_variance=False, rngs=rngs)
    # False: the running variance tracks the biased one (`irstd_jax.precise_bn`
    # pools per-image statistics exactly).
    self.unbiased_running_var = True

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    if use_running_average is None:
      use_running_average = self.use_running_average
    # Statistics in float32 whatever the compute dtype (mixed precision);
    # for float32 (and float64) inputs the casts are no-ops.
    if use_running_average:
      return super().__call__(x, use_running_average=True).astype(x.dtype)
    n = math.prod(x.shape[:-1])
    y, mean, var = batch_norm_train(x.astype(jnp.promote_types(x.dtype, jnp.float32)),
                                    self.scale[...],
                                    self.bias[...], self.epsilon)
    if self.unbiased_running_var:
      var = var * (n / max(n - 1, 1))
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return y.astype(x.dtype)


# ---------------------------------------------------------------------------
# Max pooling.

def max_pool(x: jax.Array, size: int = 2, stride: int | None = None) -> jax.Array:
  """`nn.MaxPool2d(size, stride)` without padding on NHWC.

  `lax.reduce_window` routes each window's gradient to its first maximum in
  row-major order, as torch does. With fast kernels, non-overlapping
  windows (stride == size, all the models use) take
  `cpu_kernels.max_pool_tiles`.
  """
  stride = size if stride is None else stride
  if stride == size and fast_kernels():
    return cpu_kernels.max_pool_tiles(x, size)
  return nnx.max_pool(x, (size, size), strides=(stride, stride), padding='VALID')


# ---------------------------------------------------------------------------
# Bilinear resizing.

@functools.lru_cache(maxsize=256)
def _interp_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """(out, in) linear-interpolation weights exactly as torch computes them."""
  out = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = out * scale
  else:
    src = (out + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  w = np.zeros((out_size, in_size), np.float32)
  w[np.arange(out_size), lo] += 1.0 - frac
  w[np.arange(out_size), hi] += frac
  return w


def _resize_matmul(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """Both axes' interpolation matrices applied as matrix products."""
  _, h, w, _ = x.shape
  wh = jnp.asarray(_interp_matrix(h, size[0], align_corners), x.dtype)
  ww = jnp.asarray(_interp_matrix(w, size[1], align_corners), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', wh, x)
  return jnp.einsum('pw,bowc->bopc', ww, x)


def resize_bilinear(x: jax.Array, size: Sequence[int],
                    align_corners: bool) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size` = (H, W) with torch's convention.

  `nn.Upsample(mode='bilinear')` / `F.interpolate` default to
  `align_corners=False`; `nn.UpsamplingBilinear2d` uses `align_corners=True`.
  Exact for both conventions and for up- and down-sampling (torch does not
  antialias): each axis applies torch's interpolation weights
  (`_interp_matrix`), two taps per output. With fast kernels,
  `cpu_kernels.resize` (the same weights as gathers at inference).
  """
  out_h, out_w = size
  _, h, w, _ = x.shape
  if (h, w) == (out_h, out_w):
    return x
  size, align_corners = (int(out_h), int(out_w)), bool(align_corners)
  if fast_kernels():
    return cpu_kernels.resize(x, size, align_corners, interp_matrix=_interp_matrix,
                              plain=_resize_matmul)
  return _resize_matmul(x, size, align_corners)


def upsample_bilinear(x: jax.Array, scale: int, align_corners: bool) -> jax.Array:
  """Bilinear upsampling of NHWC `x` by an integer `scale`."""
  _, h, w, _ = x.shape
  return resize_bilinear(x, (h * scale, w * scale), align_corners)


# ---------------------------------------------------------------------------
# Inputs.

def check_input(x, in_channels: int, multiple: int, model: str) -> None:
  """Raises a ValueError that says how to fix an input the model cannot take."""
  shape = getattr(x, 'shape', None)
  if shape is None or len(shape) != 4:
    raise ValueError(
        f'{model} takes a batch of NHWC images (B, H, W, {in_channels}); got '
        f'shape {shape}. Add the batch axis with x[None] and the channel axis '
        'with x[..., None].')
  _, h, w, c = shape
  if c != in_channels:
    hint = (' Channels come last (NHWC): transpose a torch-style NCHW batch '
            'with x.transpose(0, 2, 3, 1).' if h == in_channels else '')
    raise ValueError(
        f'{model} was built for {in_channels} input channel(s), got {c} '
        f'(shape {tuple(shape)}).{hint}')
  if h % multiple or w % multiple:
    raise ValueError(
        f'{model} needs height and width divisible by {multiple}, got {h}x{w}. '
        'Pad with irstd_jax.models.apply_padded(model, x), which pads to the '
        'next multiple and crops the output back.')


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
  """Zero-pads NHWC `x` at the bottom / right to the next multiple of `multiple`."""
  _, h, w, _ = x.shape
  ph, pw = -h % multiple, -w % multiple
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  return x, (h, w)


def apply_padded(model, x: jax.Array, multiple: int = 32) -> jax.Array:
  """Runs `model` on `x` of any size: pads to `multiple`, crops the output back.

  For inference at native resolution, where images are not a multiple of the
  network's total stride (16 for both models; 32 keeps a margin and is what
  the evaluation pipeline uses).
  """
  padded, (h, w) = pad_to_multiple(x, multiple)
  return model(padded)[:, :h, :w]
