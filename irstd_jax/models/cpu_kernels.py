"""Speed kernels for XLA:CPU, used by `layers` when its fast-kernel switch is on.

Each kernel computes the same map as the plain formulation in `layers` (up to
float rounding, with the same gradient), in a form that XLA:CPU runs faster
than it runs the plain one. `layers` owns the semantics and the switch
(`layers.fast_kernels`, on by default for the CPU backend); this module only
holds the faster formulations and why each is faster.

Most kernels define their gradient with `jax.custom_vjp`, so they support
reverse-mode autodiff (`jax.grad`, `jax.vjp`) but not forward mode
(`jax.jvp`, `jax.linearize`, `jax.jacfwd`): turn the switch off for those.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# Convolutions with at most this many input channels (the models' 1- to
# 3-channel image inputs, GGL-Net's 2-channel spatial attention) take
# `stencil_conv`.
STENCIL_MAX_IN_CHANNELS = 3


def stencil_applies(in_features: int, feature_group_count: int, strides,
                    kernel_dilation) -> bool:
  """Whether a convolution with these settings takes `stencil_conv`."""
  return (in_features <= STENCIL_MAX_IN_CHANNELS and feature_group_count == 1
          and tuple(strides) == (1, 1) and tuple(kernel_dilation) == (1, 1))


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def stencil_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  """Stride-1 convolution of few-channel NHWC `x`, as shifted multiply-adds.

  XLA:CPU's (Eigen) convolution is slow for 1-3 input channels; a sum of
  shifted slices times scalar weights fuses into one loop over the output.
  With a single output channel, summing channel by channel (all taps of one
  input channel, then the next) is the faster order.

  Under differentiation, forward and backward are XLA's convolution, which
  is the faster of the two in the train step: the stencil serves inference
  only.
  """
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  taps = [(i, j, c) for i in range(kh) for j in range(kw) for c in range(cin)]
  if cout == 1:
    taps.sort(key=lambda t: t[2])
  out = None
  for i, j, c in taps:
    term = xp[:, i:i + h, j:j + w, c:c + 1] * kernel[i, j, c]
    out = term if out is None else out + term
  return out


def _stencil_conv_fwd(x, kernel, padding):
  return _conv(x, kernel, padding), (x, kernel)


def _stencil_conv_bwd(padding, residuals, g):
  _, vjp = jax.vjp(lambda a, b: _conv(a, b, padding), *residuals)
  return vjp(g)


stencil_conv.defvjp(_stencil_conv_fwd, _stencil_conv_bwd)


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
  at a fraction of memory bandwidth, and batch-norm statistics and bias
  gradients are such reductions. A ones-vector times `x` viewed as (rows,
  groups * C) streams the data through the matmul library instead, then the
  groups are summed. It is as accurate as `jnp.sum`: each partial sum runs
  over at most n / groups values.
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
  """Mean of NHWC `x` over all axes but the last (`channel_sum` / count)."""
  return channel_sum(x) / (x.size // x.shape[-1])


@jax.custom_vjp
def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias over the last axis; the bias gradient is a `channel_sum`.

  XLA:CPU reduces the gradient of a broadcast add as the slow column
  reduction that `channel_sum` avoids; the models have about a hundred
  biases.
  """
  return y + bias


def _add_channel_bias_fwd(y, bias):
  return y + bias, None


def _add_channel_bias_bwd(_, g):
  return g, channel_sum(g)


add_channel_bias.defvjp(_add_channel_bias_fwd, _add_channel_bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Train-mode batch norm with `channel_sum` statistics and a closed-form VJP.

  Returns (y, mean, var) as `layers.batch_norm_train` does. The backward
  pass is the closed form: with g the output cotangent, d_bias = sum(g),
  d_scale = sum(g * xhat) and dx = scale * rstd * (g - (d_bias + xhat *
  d_scale) / n), so all three gradients take two `channel_sum`s (autodiff of
  the formula reduces over the batch four times).
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


def _tiles(x: jax.Array, k: int) -> jax.Array:
  """(B, H//k, k, W//k, k, C) view of NHWC `x`, the remainder rows / cols dropped."""
  b, h, w, c = x.shape
  return x[:, :h // k * k, :w // k * k].reshape(b, h // k, k, w // k, k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_tiles(x: jax.Array, k: int) -> jax.Array:
  """Max over non-overlapping k x k windows (stride k, no padding).

  The gradient goes to each window's first maximum in row-major order, as
  torch's (and `lax.reduce_window`'s) max pooling routes it. XLA:CPU
  rewrites the generic max-pool gradient (select-and-scatter) into index
  tensors and a scatter, which cost more than the pooling itself; with
  non-overlapping windows the gradient is an elementwise select instead.
  """
  return jnp.max(_tiles(x, k), axis=(2, 4))


def _max_pool_tiles_fwd(x, k):
  y = max_pool_tiles(x, k)
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


max_pool_tiles.defvjp(_max_pool_tiles_fwd, _max_pool_tiles_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_first(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Max over `axis` (kept); the gradient goes to the first argmax.

  The same map and gradient as `take_along_axis(x, argmax(x))`, but the
  argmax is only computed under differentiation: inference takes the plain
  max. `size` is x.shape[axis], which the backward pass needs.
  """
  del size
  return jnp.max(x, axis=axis, keepdims=True)


def _max_first_fwd(x, axis, size):
  del size
  index = jnp.argmax(x, axis=axis, keepdims=True)
  return jnp.take_along_axis(x, index, axis=axis), index


def _max_first_bwd(axis, size, index, g):
  shape = index.shape[:axis] + (size,) + index.shape[axis + 1:]
  positions = jax.lax.broadcasted_iota(index.dtype, shape, axis)
  return (jnp.where(positions == index, g, jnp.zeros((), g.dtype)),)


max_first.defvjp(_max_first_fwd, _max_first_bwd)


@functools.lru_cache(maxsize=256)
def _sparse_rows(interp_matrix, in_size: int, out_size: int,
                 align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
  """`interp_matrix(in_size, out_size, align_corners)` as (indices, weights).

  Both are (rows, taps): row r of the matrix is sum_t weights[r, t] at
  column indices[r, t]. A linear interpolation row has at most two nonzeros
  (one where an output falls on an input sample); rows with fewer are padded
  with weight 0.
  """
  w = interp_matrix(in_size, out_size, align_corners)
  nonzero = w != 0
  taps = max(int(nonzero.sum(axis=1).max()), 1)
  indices = np.zeros((w.shape[0], taps), np.int32)
  weights = np.zeros((w.shape[0], taps), np.float32)
  for row in range(w.shape[0]):
    (cols,) = np.nonzero(nonzero[row])
    indices[row, :len(cols)] = cols
    weights[row, :len(cols)] = w[row, cols]
  return indices, weights


def _interpolate_axis(x: jax.Array, axis: int, rows: tuple[np.ndarray, np.ndarray]) -> jax.Array:
  """Applies an interpolation matrix, as `_sparse_rows`, along `axis`.

  A few constant-index gathers with per-row weights, which XLA fuses into
  one loop; the matrix product does the same work densely, with transposes.
  """
  indices, weights = rows
  shape = [1] * x.ndim
  shape[axis] = indices.shape[0]
  out = None
  for t in range(indices.shape[1]):
    term = (jnp.take(x, indices[:, t], axis=axis, mode='clip')
            * weights[:, t].astype(x.dtype).reshape(shape))
    out = term if out is None else out + term
  return out


def resize(x: jax.Array, size: tuple[int, int], align_corners: bool, *,
           interp_matrix, plain) -> jax.Array:
  """Separable linear resize of NHWC `x`: gathers at inference, `plain` under
  differentiation.

  `interp_matrix(in_size, out_size, align_corners)` gives one axis's (out,
  in) weights and `plain(x, size, align_corners)` the matrix-product
  formulation; both come from `layers`, which owns torch's semantics.

  In the train step, XLA would fuse the cheap gathers into every consumer of
  the resized map, including the layout transposes of the next
  convolution's weight gradient, and the step gets slower; so under
  differentiation the forward and backward passes are `plain`'s, whose
  products stay materialised.
  """
  return _resize(x, size, align_corners, interp_matrix, plain)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _resize(x, size, align_corners, interp_matrix, plain):
  del plain
  _, h, w, _ = x.shape
  x = _interpolate_axis(x, 1, _sparse_rows(interp_matrix, h, size[0], align_corners))
  return _interpolate_axis(x, 2, _sparse_rows(interp_matrix, w, size[1], align_corners))


def _resize_fwd(x, size, align_corners, interp_matrix, plain):
  del interp_matrix
  return jax.vjp(lambda v: plain(v, size, align_corners), x)


def _resize_bwd(size, align_corners, interp_matrix, plain, vjp, g):
  del size, align_corners, interp_matrix, plain
  return vjp(g)


_resize.defvjp(_resize_fwd, _resize_bwd)
