"""Torch semantics of the shared layers, against hand-written numpy formulas.

Tests of a layer that has a fast kernel run on both paths (the `kernels`
fixture); tests of a kernel alone call `cpu_kernels` directly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irstd_jax.models import cpu_kernels
from irstd_jax.models import layers


@pytest.fixture(params=[True, False], ids=['fast', 'plain'])
def kernels(request):
  """Runs the test with the fast-kernel switch on, then off."""
  with layers.use_fast_kernels(request.param):
    yield request.param


def _torch_source_index(dst: int, in_size: int, out_size: int,
                        align_corners: bool) -> float:
  """Where torch's bilinear mode samples output index `dst` (no antialias)."""
  if align_corners:
    return dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  return max((dst + 0.5) * in_size / out_size - 0.5, 0.0)


def _bilinear_reference(x: np.ndarray, out_h: int, out_w: int,
                        align_corners: bool) -> np.ndarray:
  """Pixel-by-pixel bilinear resize of NHWC `x`, as torch defines it."""
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c), np.float64)
  for i in range(out_h):
    sy = _torch_source_index(i, h, out_h, align_corners)
    y0 = min(int(math.floor(sy)), h - 1)
    y1, fy = min(y0 + 1, h - 1), sy - y0
    for j in range(out_w):
      sx = _torch_source_index(j, w, out_w, align_corners)
      x0 = min(int(math.floor(sx)), w - 1)
      x1, fx = min(x0 + 1, w - 1), sx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


def test_upsample_known_values(kernels):
  """The textbook 1-D cases: [0, 1] upsampled x2 in both conventions."""
  x = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1)
  half = layers.upsample_bilinear(x, 2, align_corners=False)
  corners = layers.upsample_bilinear(x, 2, align_corners=True)
  np.testing.assert_allclose(half[0, 0, :, 0], [0, 0.25, 0.75, 1], atol=1e-7)
  np.testing.assert_allclose(corners[0, 0, :, 0], [0, 1 / 3, 2 / 3, 1], atol=1e-7)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_hw,out_hw', [((5, 7), (10, 14)), ((6, 4), (13, 9)),
                                          ((8, 6), (4, 3)), ((1, 3), (2, 6))])
def test_resize_bilinear_matches_torch_formula(kernels, align_corners, in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  ours = layers.resize_bilinear(jnp.asarray(x), out_hw, align_corners=align_corners)
  expected = _bilinear_reference(x.astype(np.float64), *out_hw, align_corners)
  np.testing.assert_allclose(np.asarray(ours), expected, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_hw,out_hw', [((5, 7), (10, 14)), ((8, 6), (4, 3))])
def test_resize_bilinear_inference_and_gradient(kernels, align_corners, in_hw, out_hw):
  """Inference (with fast kernels, gathers) and differentiation (matrix
  products) compute the same map, and the jitted gradient is the torch
  formula's transpose."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, *in_hw, 3)).astype(np.float32))
  cotangent = jnp.asarray(rng.normal(size=(2, *out_hw, 3)).astype(np.float32))
  resize = lambda v: layers.resize_bilinear(v, out_hw, align_corners=align_corners)
  primal, vjp = jax.vjp(resize, x)
  np.testing.assert_allclose(primal, jax.jit(resize)(x), atol=1e-6)
  # The transpose of the linear map, from the float64 reference by columns.
  columns = np.stack([
      _bilinear_reference(unit.reshape(1, *in_hw, 1), *out_hw, align_corners).ravel()
      for unit in np.eye(np.prod(in_hw))], axis=1)  # (out pixels, in pixels)
  expected = np.einsum('po,bpc->boc', columns,
                       np.asarray(cotangent, np.float64).reshape(2, -1, 3))
  np.testing.assert_allclose(jax.jit(lambda g: vjp(g)[0])(cotangent),
                             expected.reshape(2, *in_hw, 3), atol=2e-5, rtol=1e-5)


def test_max_pool_floors_odd_sizes(kernels):
  x = np.random.default_rng(1).normal(size=(1, 5, 7, 2)).astype(np.float32)
  expected = x[:, :4, :6].reshape(1, 2, 2, 3, 2, 2).max(axis=(2, 4))
  np.testing.assert_array_equal(np.asarray(layers.max_pool(jnp.asarray(x), 2)), expected)


def test_batchnorm2d_torch_running_statistics(kernels):
  """Train mode: batch statistics, torch momentum 0.1, unbiased running var."""
  rng = np.random.default_rng(2)
  channels = 3
  bn = layers.BatchNorm2d(channels, rngs=nnx.Rngs(0))
  scale, bias = rng.uniform(0.5, 1.5, channels), rng.normal(size=channels)
  running_mean, running_var = rng.normal(size=channels), rng.uniform(0.5, 2, channels)
  bn.scale[...] = jnp.asarray(scale, jnp.float32)
  bn.bias[...] = jnp.asarray(bias, jnp.float32)
  bn.mean[...] = jnp.asarray(running_mean, jnp.float32)
  bn.var[...] = jnp.asarray(running_var, jnp.float32)

  for step in range(2):
    x = rng.normal(2.0, 3.0, size=(2, 5, 4, channels)).astype(np.float32)
    bn.train()
    y = np.asarray(bn(jnp.asarray(x)))
    flat = x.reshape(-1, channels).astype(np.float64)
    n = flat.shape[0]
    mean = flat.mean(axis=0)
    biased = ((flat - mean) ** 2).sum(axis=0) / n
    unbiased = ((flat - mean) ** 2).sum(axis=0) / (n - 1)
    expected = (x - mean) / np.sqrt(biased + 1e-5) * scale + bias
    np.testing.assert_allclose(y, expected, atol=2e-5, err_msg=f'step {step}')
    running_mean = 0.9 * running_mean + 0.1 * mean
    running_var = 0.9 * running_var + 0.1 * unbiased
    np.testing.assert_allclose(np.asarray(bn.mean[...]), running_mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), running_var, rtol=1e-5)

  bn.eval()
  x = rng.normal(size=(1, 3, 3, channels)).astype(np.float32)
  expected = (x - running_mean) / np.sqrt(running_var + 1e-5) * scale + bias
  np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), expected, atol=2e-5)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), running_mean, rtol=1e-5)


def test_batch_norm_train_closed_form_gradient_matches_autodiff():
  """The hand-written backward equals differentiating the formula, in float64,
  for the input, scale and bias."""
  rng = np.random.default_rng(5)
  x = rng.normal(1.5, 2.0, size=(2, 4, 3, 5))
  scale, bias = rng.normal(size=5), rng.normal(size=5)
  cotangents = tuple(rng.normal(size=s) for s in (x.shape, (5,), (5,)))

  def by_formula(x, scale, bias):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

  with jax.enable_x64():
    args = tuple(jnp.asarray(a, jnp.float64) for a in (x, scale, bias))
    outs, vjp = jax.vjp(lambda *a: cpu_kernels.batch_norm_train(*a, 1e-5), *args)
    ref_outs, ref_vjp = jax.vjp(by_formula, *args)
    for out, ref in zip(outs, ref_outs):
      np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-12, atol=1e-12)
    # Only the normalised output (the case in the models), then all three.
    for cts in ((cotangents[0], np.zeros(5), np.zeros(5)), cotangents):
      cts = tuple(jnp.asarray(c, jnp.float64) for c in cts)
      for got, want in zip(vjp(cts), ref_vjp(cts)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('shape', [(4, 64, 64, 16), (3, 5, 7, 2), (1, 1, 1, 8), (2, 16, 16, 256)])
def test_channel_sum_equals_sum_over_all_but_last_axis(shape):
  """Grouped (matmul) and plain paths, float32 accuracy of a pairwise sum."""
  rng = np.random.default_rng(7)
  x = rng.normal(3.0, 2.0, size=shape).astype(np.float32)
  want = x.astype(np.float64).sum(axis=(0, 1, 2))
  got = np.asarray(cpu_kernels.channel_sum(jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.sqrt(x.size))


def test_conv_output_and_bias_gradient(kernels):
  """Conv2d equals the lax convolution plus bias; its bias gradient (with
  fast kernels a `channel_sum`) is the output gradient summed over batch and
  space."""
  rng = np.random.default_rng(8)
  conv = layers.Conv2d(3, 4, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 3)).astype(np.float32))
  dy = rng.normal(size=(2, 5, 4, 4)).astype(np.float32)
  expected = jax.lax.conv_general_dilated(
      x, conv.kernel[...], (2, 2), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + conv.bias[...]
  np.testing.assert_allclose(np.asarray(conv(x)), np.asarray(expected), rtol=1e-6, atol=1e-6)
  grads = nnx.grad(lambda m: jnp.sum(m(x) * dy))(conv)
  np.testing.assert_allclose(np.asarray(grads['bias'][...]), dy.sum(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-5)


def test_max_pool_gradient_goes_to_the_first_maximum(kernels):
  """Ties included (ReLU zeros), as torch: first maximum in row-major order."""
  rng = np.random.default_rng(3)
  x = rng.integers(0, 3, size=(2, 7, 9, 3)).astype(np.float32)  # Many ties.
  dy = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  expected = np.zeros_like(x)
  for b, i, j, c in np.ndindex(dy.shape):
    window = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
    r, s = np.unravel_index(np.argmax(window), (2, 2))  # First maximum.
    expected[b, 2 * i + r, 2 * j + s, c] = dy[b, i, j, c]
  y, vjp = jax.vjp(lambda v: layers.max_pool(v, 2), jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(y), x[:, :6, :8].reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4)))
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(dy))[0]), expected)


@pytest.mark.parametrize('cin, cout, k', [(2, 1, 7), (3, 16, 3), (1, 4, 3)])
def test_few_channel_conv_equals_lax_convolution(kernels, cin, cout, k):
  """With fast kernels the stencil (inference) and its gradient (XLA's) for
  1-3 channels; without, XLA's convolution throughout."""
  rng = np.random.default_rng(10)
  conv = layers.Conv2d(cin, cout, k, padding=k // 2, rngs=nnx.Rngs(1))
  assert cpu_kernels.stencil_applies(conv.in_features, conv.feature_group_count,
                                     conv.strides, conv.kernel_dilation)
  x = jnp.asarray(rng.normal(size=(2, 12, 10, cin)).astype(np.float32))
  dy = jnp.asarray(rng.normal(size=(2, 12, 10, cout)).astype(np.float32))

  def reference(kernel, bias, x):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((k // 2, k // 2),) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias

  kernel, bias = conv.kernel[...], conv.bias[...]
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, v: m(v))(conv, x)),
                             np.asarray(reference(kernel, bias, x)), rtol=1e-5, atol=1e-5)
  grads = nnx.jit(nnx.grad(lambda m, v: jnp.sum(m(v) * dy)))(conv, x)
  want = jax.grad(lambda w, b: jnp.sum(reference(w, b, x) * dy), argnums=(0, 1))(kernel, bias)
  np.testing.assert_allclose(np.asarray(grads['kernel'][...]), np.asarray(want[0]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads['bias'][...]), np.asarray(want[1]), rtol=1e-5, atol=1e-5)
  dx = jax.grad(lambda v: jnp.sum(conv(v) * dy))(x)
  dx_want = jax.grad(lambda v: jnp.sum(reference(kernel, bias, v) * dy))(x)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_want), rtol=1e-5, atol=1e-5)
