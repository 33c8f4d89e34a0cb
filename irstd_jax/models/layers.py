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


_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Convolutions with at most this many input channels (the models' 1- to
# 3-channel image inputs, the 2-channel spatial attention) take `_stencil_conv`.
STENCIL_MAX_IN_CHANNELS = 3


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stencil_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  """Stride-1 convolution of few-channel NHWC `x`, as shifted multiply-adds.

  XLA:CPU's Eigen convolution is slow for 1-3 input channels: the TGFM's 7x7
  2 -> 1 spatial attention took 29.8 ms at 4x256², 2.5 ms as one fused loop
  of shifted slices; GGL-Net's 3x3 3 -> 16 input convolutions 10.4 -> 2.6 ms.
  When differentiated, forward and backward are XLA's convolution.
  """
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  taps = [(i, j, c) for i in range(kh) for j in range(kw) for c in range(cin)]
  if cout == 1:  # Channel-outer order: measured 7x faster for the 7x7 2 -> 1 case.
    taps.sort(key=lambda t: t[2])
  out = None
  for i, j, c in taps:
    term = xp[:, i:i + h, j:j + w, c:c + 1] * kernel[i, j, c]
    out = term if out is None else out + term
  return out


def _stencil_conv_fwd(x, kernel, padding):
  # Under differentiation XLA's convolution: the stencil made the GGL-Net
  # train step slower (2.86 -> 3.18 s), so it only serves inference.
  return _conv(x, kernel, padding), (x, kernel)


def _stencil_conv_bwd(padding, residuals, g):
  _, vjp = jax.vjp(lambda a, b: _conv(a, b, padding), *residuals)
  return vjp(g)


_stencil_conv.defvjp(_stencil_conv_fwd, _stencil_conv_bwd)


class _Conv(nnx.Conv):
  """`nnx.Conv` (NHWC, explicit padding) with torch's conv semantics and two
  CPU fast paths: the bias gradient is a `channel_sum` (XLA:CPU reduces the
  gradient of a broadcast add as a slow reduce-window tree; the models have
  ~100 biases), and few-channel inputs take `_stencil_conv`.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    if (self.in_features <= STENCIL_MAX_IN_CHANNELS and self.feature_group_count == 1
        and tuple(self.strides) == (1, 1) and tuple(self.kernel_dilation) == (1, 1)):
      y = _stencil_conv(x, kernel, tuple(map(tuple, self.padding)))
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, self.strides, self.padding, rhs_dilation=self.kernel_dilation,
          dimension_numbers=_NHWC, feature_group_count=self.feature_group_count,
          precision=self.precision)
    return y if bias is None else add_channel_bias(y, bias)


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


def _sum_split(n: int, channels: int) -> tuple[int, int]:
  """(rows, groups) with rows * groups = n for `channel_sum`'s first stage.

  Groups are the largest power of two that divides n, keeps a row under
  2048 values and leaves at least 64 rows.
  """
  groups = 1
  while (groups * 2 * channels <= 2048 and n % (groups * 2) == 0
         and n // (groups * 2) >= 64):
    groups *= 2
  return n // groups, groups


def channel_sum(x: jax.Array) -> jax.Array:
  """Sum of NHWC `x` over all axes but the last, as a matrix product.

  XLA:CPU turns a large column reduction into a reduce-window tree that runs
  at a fraction of memory bandwidth (batch-norm statistics were a fifth of
  the GGL-Net train step). A ones-vector times `x` viewed as (rows, groups *
  C) streams the data through the matmul library instead, then the groups
  are summed: 2-4x faster than `jnp.sum` for the models' shapes, and as
  accurate (each partial sum runs over at most n / groups values).
  """
  c = x.shape[-1]
  n = x.size // c
  rows, groups = _sum_split(n, c)
  if groups == 1:
    return jnp.sum(x.reshape(n, c), axis=0)
  partial = jnp.dot(jnp.ones((rows,), x.dtype), x.reshape(rows, groups * c),
                    precision=jax.lax.Precision.HIGHEST)
  return jnp.sum(partial.reshape(groups, c), axis=0)


def channel_mean(x: jax.Array) -> jax.Array:
  return channel_sum(x) / (x.size // x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Train-mode batch norm: (x - mean) / sqrt(var + eps) * scale + bias.

  Statistics over all axes but the last; returns (y, mean, var). The
  variance is two-pass and biased, as torch normalises. The backward pass is
  the closed form: with g the output cotangent, d_bias = sum(g), d_scale =
  sum(g * xhat) and dx = scale * rstd * (g - (d_bias + xhat * d_scale) / n),
  two `channel_sum`s for all three gradients (a closed form for the input
  alone plus autodiff for scale and bias took four).
  """
  mean = channel_mean(x)
  var = channel_mean(jnp.square(x - mean))
  xhat = (x - mean) * jax.lax.rsqrt(var + epsilon)
  return xhat * scale + bias, mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  out = batch_norm_train(x, scale, bias, epsilon)
  return out, (x, scale, out[1], jax.lax.rsqrt(out[2] + epsilon))


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd = residuals
  g, d_mean, d_var = cotangents
  n = x.size // x.shape[-1]
  xhat = (x - mean) * rstd
  d_bias = channel_sum(g)
  d_scale = channel_sum(g * xhat)
  dx = (scale * rstd) * (g - (d_bias + xhat * d_scale) / n)
  # The statistics' own cotangents (zero when only y is used).
  dx = dx + d_mean / n + d_var * (2.0 / n) * (x - mean)
  return dx, d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


@jax.custom_vjp
def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the last axis; the bias gradient is a `channel_sum`."""
  return y + bias


def _add_channel_bias_fwd(y, bias):
  return y + bias, None


def _add_channel_bias_bwd(_, g):
  return g, channel_sum(g)


add_channel_bias.defvjp(_add_channel_bias_fwd, _add_channel_bias_bwd)


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
    # for float32 (and float64) inputs the casts are no-ops.
    if use_running_average:
      return super().__call__(x, use_running_average=True).astype(x.dtype)
    n = math.prod(x.shape[:-1])
    y, mean, var = batch_norm_train(x.astype(jnp.promote_types(x.dtype, jnp.float32)),
                                    self.scale[...],
                                    self.bias[...], self.epsilon)
    unbiased = var * (n / max(n - 1, 1))
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased)
    return y.astype(x.dtype)


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


@functools.lru_cache(maxsize=256)
def _sparse_rows(in_size: int, out_size: int,
                 align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
  """The interpolation matrix as (indices, weights), both (rows, taps).

  Row r of the matrix is sum_t weights[r, t] at column indices[r, t]; a
  linear interpolation row has at most two nonzeros (one where an output
  falls on an input sample). Rows with fewer are padded with weight 0.
  """
  w = _interp_matrix(in_size, out_size, align_corners)
  nonzero = w != 0
  taps = max(int(nonzero.sum(axis=1).max()), 1)
  indices = np.zeros((w.shape[0], taps), np.int32)
  weights = np.zeros((w.shape[0], taps), np.float32)
  for row in range(w.shape[0]):
    (cols,) = np.nonzero(nonzero[row])
    indices[row, :len(cols)] = cols
    weights[row, :len(cols)] = w[row, cols]
  return indices, weights


def _interpolate_axis(x: jax.Array, axis: int, in_size: int, out_size: int,
                      align_corners: bool) -> jax.Array:
  """Applies the interpolation matrix along `axis` as gathers.

  A few constant-index gathers with per-row weights, which XLA fuses into one
  loop: 4-9x faster on the CPU than the matrix product with its transposes
  (a 4x128²x16 -> 256² upsampling 16.5 -> 1.9 ms).
  """
  indices, weights = _sparse_rows(in_size, out_size, align_corners)
  shape = [1] * x.ndim
  shape[axis] = indices.shape[0]
  out = None
  for t in range(indices.shape[1]):
    term = (jnp.take(x, indices[:, t], axis=axis, mode='clip')
            * weights[:, t].astype(x.dtype).reshape(shape))
    out = term if out is None else out + term
  return out


def _resize_matmul(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  _, h, w, _ = x.shape
  wh = jnp.asarray(_interp_matrix(h, size[0], align_corners), x.dtype)
  ww = jnp.asarray(_interp_matrix(w, size[1], align_corners), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', wh, x)
  return jnp.einsum('pw,bowc->bopc', ww, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _resize(x: jax.Array, size: tuple[int, int], align_corners: bool) -> jax.Array:
  """Inference: per-axis gathers. Under differentiation: matrix products.

  In the train step, XLA fuses the cheap gathers into every consumer of the
  resized map, including the layout transposes of the next convolution's
  weight gradient, and the GGL-Net step got slower (2.41 -> 2.67 s); the
  matrix products (and their transposes for the backward pass) stay
  materialised, as before.
  """
  _, h, w, _ = x.shape
  x = _interpolate_axis(x, 1, h, size[0], align_corners)
  return _interpolate_axis(x, 2, w, size[1], align_corners)


def _resize_fwd(x, size, align_corners):
  return jax.vjp(lambda v: _resize_matmul(v, size, align_corners), x)


def _resize_bwd(size, align_corners, vjp, g):
  del size, align_corners
  return vjp(g)


_resize.defvjp(_resize_fwd, _resize_bwd)


def resize_bilinear(x: jax.Array, size: Sequence[int],
                    align_corners: bool) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size` = (H, W) with torch's convention.

  `nn.Upsample(mode='bilinear')` / `F.interpolate` default to
  `align_corners=False`; `nn.UpsamplingBilinear2d` uses `align_corners=True`.
  Exact for both conventions and for up- and down-sampling (torch does not
  antialias): each axis applies torch's interpolation weights
  (`_interp_matrix`), two taps per output.
  """
  out_h, out_w = size
  _, h, w, _ = x.shape
  if (h, w) == (out_h, out_w):
    return x
  return _resize(x, (int(out_h), int(out_w)), bool(align_corners))


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
