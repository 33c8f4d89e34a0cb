"""SoftIoU (GaNet's batch-summed and GGL-Net's per-sample reductions) and PAL's edge BCE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irstd_jax import losses


def _numpy_soft_iou(probs, targets, per_sample, smooth=1.0):
  """1 - (|p t| + s) / (|p| + |t| - |p t| + s), summed per image or per batch."""
  probs, targets = probs.astype(np.float64), targets.astype(np.float64)
  if per_sample:
    ratios = []
    for p, t in zip(probs, targets):
      inter = (p * t).sum()
      ratios.append((inter + smooth) / (p.sum() + t.sum() - inter + smooth))
    return 1 - np.mean(ratios)
  inter = (probs * targets).sum()
  return 1 - (inter + smooth) / (probs.sum() + targets.sum() - inter + smooth)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 8, 6, 1)).astype(np.float32)
  targets = np.zeros((3, 8, 6, 1), np.float32)
  targets[0, 2:4, 1:3] = 1  # targets of different sizes: the reductions differ
  targets[1, 0:6, 0:5] = 1
  return logits, targets


@pytest.mark.parametrize('reduction,per_sample', [('batch', False), ('sample', True)])
@pytest.mark.parametrize('smooth', [1.0, 0.1])
def test_matches_numpy(batch, reduction, per_sample, smooth):
  logits, targets = batch
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = _numpy_soft_iou(probs, targets, per_sample, smooth)
  ours = losses.soft_iou_loss(jnp.asarray(logits), jnp.asarray(targets), reduction, smooth)
  np.testing.assert_allclose(float(ours), expected, rtol=1e-6)


def test_reductions_differ_and_bad_arguments(batch):
  logits, targets = batch
  by_batch = losses.soft_iou_loss(logits, targets, 'batch')
  by_sample = losses.soft_iou_loss(logits, targets, 'sample')
  assert abs(float(by_batch) - float(by_sample)) > 1e-3
  with pytest.raises(ValueError, match='reduction'):
    losses.soft_iou_loss(logits, targets, 'mean')
  with pytest.raises(ValueError, match='differ in shape'):
    losses.soft_iou_loss(logits, targets[:, :4], 'batch')


# -- PAL's edge-weighted BCE ----------------------------------------------------


def _reference_edges(mask):
  """PAL's rule from its description: per class of the one-hot mask, zero-padded
  by one pixel, the pixels at Euclidean distance <= 1 from the other value;
  then rows 1 and -1 and columns 0 and -1 cleared."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  edge = np.zeros(mask.shape, bool)
  for channel in (mask == 0, mask == 1):
    padded = np.pad(channel.astype(float), 1)
    dist = ndimage.distance_transform_edt(padded) + ndimage.distance_transform_edt(1 - padded)
    dist = dist[1:-1, 1:-1]
    edge |= (dist > 0) & (dist <= 1)
  edge[1, :] = False
  edge[-1, :] = False
  edge[:, 0] = False
  edge[:, -1] = False
  return edge


def test_pal_edge_map_matches_the_distance_rule():
  rng = np.random.default_rng(3)
  masks = np.zeros((3, 9, 11), np.float32)
  masks[0, 3:6, 4:7] = 1          # an inner square
  masks[1, 0:2, 0:3] = 1          # touching the top-left corner
  masks[2] = rng.random((9, 11)) > 0.7
  ours = np.asarray(losses.pal_edge_map(jnp.asarray(masks[..., None])))[..., 0]
  for mask, edge in zip(masks, ours):
    np.testing.assert_array_equal(edge, _reference_edges(mask))
  # Row 0 stays marked without any target (PAL clears row 1, not row 0).
  empty = np.asarray(losses.pal_edge_map(jnp.zeros((1, 5, 6, 1))))[0, ..., 0]
  assert empty[0].tolist() == [False, True, True, True, True, False]
  assert not empty[1:].any()


def _reference_edge_bce(logits, targets, edges, weight=4.0):
  x, t = logits.astype(np.float64), targets.astype(np.float64)
  bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
  values = (bce * np.where(edges, weight, 1.0)).reshape(-1)
  threshold = np.sort(values)[int(0.5 * values.size)]
  return values[values >= threshold].mean()


def test_edge_bce_matches_numpy_and_keeps_the_harder_half(batch):
  logits, targets = batch
  edges = np.asarray(losses.pal_edge_map(jnp.asarray(targets)))
  expected = _reference_edge_bce(logits, targets, edges)
  ours = losses.edge_bce_loss(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(float(ours), expected, rtol=1e-5)
  # The harder half only: above the plain mean of all weighted losses.
  x = logits.astype(np.float64)
  bce = np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))
  assert float(ours) > (bce * np.where(edges, 4.0, 1.0)).mean()
  # Gradients reach only the kept pixels (PyTorch's boolean indexing).
  grads = np.asarray(jax.grad(lambda z: losses.edge_bce_loss(z, jnp.asarray(targets)))(
      jnp.asarray(logits)))
  values = (bce * np.where(edges, 4.0, 1.0)).reshape(-1)
  dropped = values < np.sort(values)[values.size // 2]
  assert dropped.sum() == values.size // 2
  assert np.all(grads.reshape(-1)[dropped] == 0)
  assert np.all(grads.reshape(-1)[~dropped] != 0)
  with pytest.raises(ValueError, match='differ in shape'):
    losses.edge_bce_loss(logits, targets[:, :4])


def test_train_step_loss_follows_the_config_name(batch):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from irstd_jax import steps  # pylint: disable=g-import-not-at-top
  logits, targets = batch
  model = nnx.Conv(1, 1, (3, 3), rngs=nnx.Rngs(0))
  data = {'image': jnp.asarray(logits), 'mask': jnp.asarray(targets)}
  out = model(data['image'])
  np.testing.assert_allclose(
      float(steps.loss_fn(model, data, ('edge_bce', 'batch', 1.0))),
      float(losses.edge_bce_loss(out, data['mask'])), rtol=1e-6)
  np.testing.assert_allclose(
      float(steps.loss_fn(model, data, ('softiou', 'sample', 1.0))),
      float(losses.soft_iou_loss(out, data['mask'], 'sample')), rtol=1e-6)
  with pytest.raises(ValueError, match='loss.name'):
    steps.loss_fn(model, data, ('dice', 'batch', 1.0))
