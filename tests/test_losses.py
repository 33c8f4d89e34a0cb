"""SoftIoU loss: GaNet's batch-summed and GGL-Net's per-sample reductions."""

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
