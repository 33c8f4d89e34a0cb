"""Mixed precision (`dtype='bfloat16'`): bfloat16 compute, float32 state.

For each model family, a float32 model and a bfloat16 model share the same
weights; the bfloat16 one must run its convolutions in bfloat16, keep
parameters, gradients and batch-norm statistics float32, and return float32
logits and a loss close to the float32 ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irstd_jax import losses
from irstd_jax import models

# name -> (input channels, build options); small widths, 32x32 inputs.
CASES = {
    'ganet': (1, dict(img_size=32, base_channels=8)),
    'unet': (1, dict(base_channels=8)),
    'gglnet': (3, {}),
}


@pytest.fixture(scope='module', autouse=True)
def fast_compilation():
  """Less XLA optimisation: these small graphs compile ~2x faster (restored after)."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def _pair(name):
  channels, options = CASES[name]
  full = models.build(name, rngs=nnx.Rngs(0), **options)
  mixed = models.build(name, rngs=nnx.Rngs(1), dtype='bfloat16', **options)
  nnx.update(mixed, nnx.state(full))  # Same weights and statistics.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, 32, 32, channels), np.float32))
  y = jnp.asarray((rng.random((2, 32, 32, 1)) > 0.97).astype(np.float32))
  return full, mixed, x, y


@nnx.jit
def _evaluate(model, x, y):
  """Eval-mode logits, then a train-mode loss and gradients (stats updated)."""
  model.eval()
  logits = model(x)
  model.train()
  loss, grads = nnx.value_and_grad(lambda m: losses.soft_iou_loss(m(x), y))(model)
  return logits, loss, grads


def _conv_operand_dtypes(model, x):
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, v: nnx.merge(graphdef, s)(v))(state, x)
  found = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (list, tuple)) else [param]):
          if hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            walk(sub.jaxpr)
          elif hasattr(sub, 'eqns'):
            walk(sub)
  walk(jaxpr.jaxpr)
  return found


def _kernel_cosines(grads_a, grads_b):
  """Cosine similarity of each convolution / linear kernel's gradient."""
  out = []
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads_a)),
                          jax.tree.leaves(nnx.to_pure_dict(grads_b))):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    # Kernels that get a gradient (GFEM's zero-initialised BN blocks some).
    if 'kernel' in jax.tree_util.keystr(path) and np.linalg.norm(a) > 0:
      out.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  return np.asarray(out)


@pytest.mark.parametrize('name', sorted(CASES))
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(name):
  full, mixed, x, y = _pair(name)
  assert _conv_operand_dtypes(full, x) == {'float32'}
  assert _conv_operand_dtypes(mixed, x) == {'bfloat16'}

  reference, loss_full, grads_full = _evaluate(full, x, y)
  logits, loss_mixed, grads_mixed = _evaluate(mixed, x, y)
  assert logits.dtype == jnp.float32
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9, 0.2%) per
  # operation; through ~20-50 layers that adds up to a few percent.
  scale = float(jnp.max(jnp.abs(reference)))
  assert float(jnp.max(jnp.abs(logits - reference))) < 0.05 * scale
  assert abs(float(loss_mixed) - float(loss_full)) < 0.01

  for tree in (nnx.state(mixed), grads_mixed):
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert {str(leaf.dtype) for leaf in leaves} == {'float32'}
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
  # Train mode updated the batch statistics (float32, checked above) to
  # values near float32's; single channels of the deepest levels (2x2 pixels,
  # 8 values per batch) can be off by ~10%.
  stats_full = np.concatenate([np.ravel(a) for a in jax.tree.leaves(nnx.state(full, nnx.BatchStat))])
  stats_mixed = np.concatenate([np.ravel(a) for a in jax.tree.leaves(nnx.state(mixed, nnx.BatchStat))])
  assert np.median(np.abs(stats_mixed - stats_full) / (np.abs(stats_full) + 1e-3)) < 0.01

  cosines = _kernel_cosines(grads_full, grads_mixed)
  if name == 'gglnet':
    # GGL-Net routes gradients through maxima (TGFM channel / spatial max,
    # max pooling); bfloat16 rounding makes near-ties flip, so its gradients
    # at initialisation only roughly agree (median cosine 0.66 measured).
    assert np.median(cosines) > 0.3
  else:
    # Same descent direction, up to bfloat16 rounding noise (measured:
    # median 0.97, minimum 0.93 for the U-Net).
    assert np.median(cosines) > 0.9 and cosines.min() > 0.8, cosines


def test_float32_dtype_is_the_default_path():
  channels, options = CASES['unet']
  default = models.build('unet', rngs=nnx.Rngs(0), **options)
  explicit = models.build('unet', rngs=nnx.Rngs(0), dtype='float32', **options)
  x = jnp.ones((1, 32, 32, channels))
  default.eval()
  explicit.eval()
  forward = nnx.jit(lambda m, v: m(v))
  np.testing.assert_array_equal(np.asarray(forward(default, x)), np.asarray(forward(explicit, x)))
  with pytest.raises(ValueError, match='dtype'):
    models.build('unet', dtype='int8')
