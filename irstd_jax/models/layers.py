"""Building blocks shared by the model families, with PyTorch semantics.

The official GaNet and GGL-Net code is PyTorch. To be weight-compatible (and to
train the same way), convolutions pad explicitly as torch does, batch norm keeps
torch's running statistics, and bilinear resizing offers both of torch's
`align_corners` conventions. Every model is NHWC.

Module attribute names mirror the official torch module names, so that
`irstd_jax.convert` maps a torch state dict onto a model by name alone.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _host_or_traced(host_sample, traced_sample):
  """An initializer that draws on the host unless it runs under a trace.

  Eager `jax.random` compiles one XLA program per parameter shape: building a
  whole model that way took 30-100 s on a 2-core CPU. A numpy generator seeded
  by the key draws the same values every time without compiling anything.
  Under a trace (`jax.jit`, `nnx.eval_shape`, `nnx.vmap`) the key has no value,
  so `jax.random` is used there.
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
  return nnx.Conv(
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


@jax.custom_vjp
def batch_normalize(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x - mean) / sqrt(var + eps) over all axes but the last, with mean and var.

  The variance is two-pass and biased, as torch normalises. The backward
  pass is the closed form, rstd * (g - mean(g) - xhat * mean(g * xhat)):
  two reductions in one pass over the data, where differentiating the
  forward formula gives XLA four; this made the GGL-Net train step ~9%
  faster on the CPU.
  """
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return (x - mean) * jax.lax.rsqrt(var + epsilon), mean, var


def _batch_normalize_fwd(x, epsilon):
  out = batch_normalize(x, epsilon)
  return out, (x, out[1], jax.lax.rsqrt(out[2] + epsilon))


def _batch_normalize_bwd(residuals, cotangents):
  x, mean, rstd = residuals
  d_xhat, d_mean, d_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = math.prod(x.shape[a] for a in axes)
  xhat = (x - mean) * rstd
  dx = rstd * (d_xhat - jnp.mean(d_xhat, axis=axes)
               - xhat * jnp.mean(d_xhat * xhat, axis=axes))
  # The statistics' own cotangents (zero when only the output is used).
  dx = dx + d_mean / n + d_var * (2.0 / n) * (x - mean)
  return dx, None


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


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

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    if use_running_average is None:
      use_running_average = self.use_running_average
    # Statistics in float32 whatever the compute dtype (mixed precision);
    # for float32 inputs the casts are no-ops.
    if use_running_average:
      return super().__call__(x, use_running_average=True).astype(x.dtype)
    n = math.prod(x.shape[:-1])
    y, mean, var = batch_normalize(x.astype(jnp.float32), self.epsilon)
    unbiased = var * (n / max(n - 1, 1))
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


def max_pool(x: jax.Array, size: int = 2, stride: int | None = None) -> jax.Array:
  """`nn.MaxPool2d(size, stride)` without padding on NHWC.

  Non-overlapping windows (stride == size, all the models use) take
  `_max_pool_tiles`: XLA's generic max-pool gradient (select-and-scatter)
  is rewritten on the CPU into index tensors and a scatter, which cost more
  than the pooling itself.
  """
  stride = size if stride is None else stride
  if stride == size:
    return _max_pool_tiles(x, size)
  return nnx.max_pool(x, (size, size), strides=(stride, stride), padding='VALID')


def _tiles(x: jax.Array, k: int) -> jax.Array:
  """(B, H//k, k, W//k, k, C) view of NHWC `x`, the remainder rows / cols dropped."""
  b, h, w, c = x.shape
  return x[:, :h // k * k, :w // k * k].reshape(b, h // k, k, w // k, k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_tiles(x: jax.Array, k: int) -> jax.Array:
  """Max over non-overlapping k x k windows; the gradient goes to each window's
  first maximum in row-major order, as torch's max pooling routes it."""
  return jnp.max(_tiles(x, k), axis=(2, 4))


def _max_pool_tiles_fwd(x, k):
  y = _max_pool_tiles(x, k)
  return y, (x, y)


def _max_pool_tiles_bwd(k, residuals, dy):
  x, y = residuals
  order = (jnp.arange(k)[:, None] * k + jnp.arange(k)).reshape(1, 1, k, 1, k, 1)
  hits = _tiles(x, k) == y[:, :, None, :, None]
  first = jnp.min(jnp.where(hits, order, k * k), axis=(2, 4), keepdims=True)
  dx = jnp.where(order == first, dy[:, :, None, :, None], 0).astype(dy.dtype)
  b, h, w, c = x.shape
  dx = dx.reshape(b, h // k * k, w // k * k, c)
  return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


_max_pool_tiles.defvjp(_max_pool_tiles_fwd, _max_pool_tiles_bwd)


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


def resize_bilinear(x: jax.Array, size: Sequence[int],
                    align_corners: bool) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size` = (H, W) with torch's convention.

  `nn.Upsample(mode='bilinear')` / `F.interpolate` default to
  `align_corners=False`; `nn.UpsamplingBilinear2d` uses `align_corners=True`.
  Written as two small matrix products, exact for both conventions and for
  up- and down-sampling (torch does not antialias).
  """
  out_h, out_w = size
  _, h, w, _ = x.shape
  if (h, w) == (out_h, out_w):
    return x
  wh = jnp.asarray(_interp_matrix(h, out_h, align_corners), x.dtype)
  ww = jnp.asarray(_interp_matrix(w, out_w, align_corners), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', wh, x)
  return jnp.einsum('pw,bowc->bopc', ww, x)


def upsample_bilinear(x: jax.Array, scale: int, align_corners: bool) -> jax.Array:
  """Bilinear upsampling of NHWC `x` by an integer `scale`."""
  _, h, w, _ = x.shape
  return resize_bilinear(x, (h * scale, w * scale), align_corners)


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
