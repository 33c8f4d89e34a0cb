"""The fast-kernel switch: both paths agree, and the plain one supports jax.jvp.

Layer by layer, the `cpu_kernels` formulation and the plain one give the same
outputs and gradients. For each model (small widths, 32x32 inputs), in train
and eval mode, forward-mode autodiff on the plain path agrees with the fast
path's reverse mode, whose gradients are hand-written: <ct, J t> = <J^T ct, t>
for random tangents of the input and every parameter. (Central differences
are no reference in float32: the networks' ReLUs and max poolings make them
converge slowly; in float64 GGL-Net's eval-mode jvp matches them to 1e-8.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irstd_jax import models
from irstd_jax.models import gglnet
from irstd_jax.models import layers


def _assert_close(got, want, rtol=1e-5):
  """Equal up to float32 rounding, relative to the largest magnitude."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1.0))


# --- The switch ---


def test_default_follows_the_backend_and_settings_restore():
  assert layers.fast_kernels() == (jax.default_backend() == 'cpu')
  with layers.use_fast_kernels(False):
    assert not layers.fast_kernels()
    with layers.use_fast_kernels(True):
      assert layers.fast_kernels()
    assert not layers.fast_kernels()
    with layers.use_fast_kernels(None):
      assert layers.fast_kernels() == (jax.default_backend() == 'cpu')
  assert layers.fast_kernels() == (jax.default_backend() == 'cpu')
  try:
    layers.use_fast_kernels(not layers.fast_kernels())  # A plain call persists.
    assert layers.fast_kernels() != (jax.default_backend() == 'cpu')
  finally:
    layers.use_fast_kernels(None)
  with pytest.raises(ValueError, match='True, False or None'):
    layers.use_fast_kernels('auto')
  with pytest.raises(ValueError, match='True, False or None'):
    models.build('unet', fast_kernels='yes')


def _custom_vjp_calls(model, x) -> int:
  """Number of custom-VJP calls in the traced forward pass of `model`."""
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, v: nnx.merge(graphdef, s)(v))(state, x)
  return str(jaxpr).count('custom_vjp_call')


@pytest.mark.parametrize('name, channels', [('unet', 1), ('gglnet', 3)])
def test_model_option_overrides_the_switch(name, channels):
  """The plain path has no custom VJP at all (so jax.jvp goes through)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  options = dict(base_channels=8) if name == 'unet' else {}
  plain = nnx.eval_shape(lambda: models.build(name, fast_kernels=False, **options))
  fast = nnx.eval_shape(lambda: models.build(name, fast_kernels=True, **options))
  with layers.use_fast_kernels(True):
    assert _custom_vjp_calls(plain, x) == 0
  with layers.use_fast_kernels(False):
    assert _custom_vjp_calls(fast, x) > 0


# --- Layer by layer: the fast and plain paths agree ---


def _both_paths(fn, *args, seed=0):
  """On the fast path, then on the plain path: fn(*args) jitted and eager,
  and the gradient of <fn(*args), ct> for every arg."""
  results = []
  for fast in (True, False):
    with layers.use_fast_kernels(fast):
      out, vjp = jax.vjp(fn, *args)
      cts = jax.tree.map(
          lambda o: jnp.asarray(np.random.default_rng(seed).normal(size=o.shape), o.dtype), out)
      # A new function for each path: jax.jit caches the trace by function.
      jitted = jax.jit(lambda *a: fn(*a))  # pylint: disable=unnecessary-lambda
      results.append((jitted(*args), out, vjp(cts)))
      # Every case here has a fast kernel, and only the fast path takes it.
      calls = str(jax.make_jaxpr(lambda *a: fn(*a))(*args)).count('custom_vjp_call')  # pylint: disable=unnecessary-lambda
      assert (calls > 0) == fast, calls
  return results


def _compare(results):
  (fast_jit, fast, fast_grads), (plain_jit, plain, plain_grads) = results
  for tree_a, tree_b in ((fast_jit, plain_jit), (fast, plain), (fast_grads, plain_grads)):
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
      _assert_close(a, b)


@pytest.mark.parametrize('cin, cout, k, stride, bias', [
    (2, 1, 7, 1, True), (3, 16, 3, 1, True), (1, 4, 3, 1, False),
    (16, 8, 3, 2, True), (8, 8, 1, 1, True)])
def test_conv_paths_agree(cin, cout, k, stride, bias):
  conv = layers.Conv2d(cin, cout, k, stride, k // 2, bias=bias, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(conv)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 12, 10, cin)), jnp.float32)
  _compare(_both_paths(lambda p, v: nnx.merge(graphdef, p)(v), params, x))


def test_batch_norm_train_paths_agree():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(1.5, 2.0, size=(4, 16, 16, 8)), jnp.float32)
  scale, bias = (jnp.asarray(rng.normal(size=8), jnp.float32) for _ in range(2))
  _compare(_both_paths(lambda *a: layers.batch_norm_train(*a, 1e-5), x, scale, bias))


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_paths_agree(shape):
  """Ties included: integers, so that windows share their maximum."""
  x = jnp.asarray(np.random.default_rng(3).integers(0, 3, size=shape), jnp.float32)
  results = _both_paths(lambda v: layers.max_pool(v, 2), x)
  _compare(results)
  np.testing.assert_array_equal(results[0][2][0], results[1][2][0])


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_hw, out_hw', [((4, 6), (8, 12)), ((9, 7), (4, 5))])
def test_resize_paths_agree(align_corners, in_hw, out_hw):
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, *in_hw, 3)), jnp.float32)
  _compare(_both_paths(
      lambda v: layers.resize_bilinear(v, out_hw, align_corners=align_corners), x))


@pytest.mark.parametrize('axis', [1, -1])
def test_gglnet_max_keepdims_paths_agree(axis):
  x = jnp.asarray(np.random.default_rng(5).integers(0, 4, size=(2, 5, 6)), jnp.float32)
  results = _both_paths(lambda v: gglnet._max_keepdims(v, axis), x)  # pylint: disable=protected-access
  _compare(results)
  np.testing.assert_array_equal(results[0][2][0], results[1][2][0])


# --- Forward mode through the models, on the plain path ---

# name -> (input channels, build options); small widths, 32x32 inputs.
CASES = {
    'ganet': (1, dict(img_size=32, base_channels=8)),
    'unet': (1, dict(base_channels=8)),
    'gglnet': (3, {}),
}


@pytest.fixture(scope='module', autouse=True)
def fast_compilation():
  """Less XLA optimisation: the models compile faster (restored after)."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def _random_like(tree, seed):
  keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(tree))))
  return jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype), tree)


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(CASES))
def test_jvp_through_model_on_the_plain_path(name, train):
  channels, options = CASES[name]
  model = models.build(name, rngs=nnx.Rngs(0), **options)
  model.train() if train else model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, 32, 32, channels)), jnp.float32)
  t_params, t_x = _random_like(params, 1), _random_like(x, 2)
  ct = _random_like(jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32), 3)

  def f(p, v):
    # Fresh variables (tree.map copies them) inside each transformation,
    # which the train-mode statistics update mutates.
    m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
    return m(v), nnx.state(m, nnx.BatchStat)

  @jax.jit
  def run(p, v, tp, tv):
    with layers.use_fast_kernels(False):
      (y, stats), (y_dot, stats_dot) = jax.jvp(f, (p, v), (tp, tv))
    with layers.use_fast_kernels(True):
      (y_fast, stats_fast), vjp = jax.vjp(f, p, v)
      g_params, g_x = vjp((ct, jax.tree.map(jnp.zeros_like, stats_fast)))
    return y, y_dot, stats, stats_dot, y_fast, stats_fast, _vdot(g_params, tp) + _vdot(g_x, tv)

  y, y_dot, stats, stats_dot, y_fast, stats_fast, reverse = run(params, x, t_params, t_x)
  _assert_close(y, y_fast, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_fast)):
    _assert_close(a, b, rtol=1e-4)
  assert all(not np.any(s) for s in jax.tree.leaves(stats_dot))  # stop_gradient
  forward = float(jnp.vdot(ct, y_dot))
  scale = float(jnp.linalg.norm(ct) * jnp.linalg.norm(y_dot))
  print(name, train, forward, float(reverse), scale)
  assert abs(forward - float(reverse)) <= 1e-4 * scale, (forward, float(reverse), scale)
