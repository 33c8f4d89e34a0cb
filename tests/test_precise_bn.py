"""Precise batch norm: exact pooling, and eval mode equal to a train-mode pass."""

from flax import nnx
import jax
import ml_collections
import numpy as np
import pytest

from irstd_jax import models
from irstd_jax import precise_bn
from irstd_jax import sharding


def test_population_pools_per_batch_statistics_exactly():
  rng = np.random.default_rng(0)
  first, second = rng.normal(1.0, 2.0, (96, 3)), rng.normal(-0.5, 0.7, (32, 3))

  def stats(x):  # Biased, as the calibration graph keeps them.
    return {'block': {'bn': {'mean': x.mean(0), 'var': x.var(0)}}}

  pooled = precise_bn.population([(stats(first), 96.0), (stats(second), 32.0)])
  both = np.concatenate([first, second])
  np.testing.assert_allclose(pooled['block']['bn']['mean'], both.mean(0), rtol=1e-12)
  np.testing.assert_allclose(pooled['block']['bn']['var'], both.var(0), rtol=1e-12)
  with pytest.raises(ValueError, match='at least one'):
    precise_bn.population([])


@pytest.fixture(scope='module')
def tiny_model():
  return models.build('unet', rngs=nnx.Rngs(0), base_channels=4)


def _batch(images, ids):
  return {'image': np.asarray(images, np.float32), 'id': ids}


def test_eval_mode_after_recalibrating_on_an_image_is_train_mode_on_it(tiny_model):
  """With one image, the population is that image's pass: eval output = train output."""
  rng = np.random.default_rng(1)
  image = rng.normal(size=(1, 32, 64, 1)).astype(np.float32)
  other = rng.normal(3.0, 5.0, size=(1, 32, 32, 1)).astype(np.float32)
  weights = nnx.to_pure_dict(nnx.state(tiny_model))
  mesh = sharding.create_mesh()
  batches = [_batch(np.concatenate([image, np.zeros_like(image)]), ['a', '']),  # '' is filler.
             _batch(other, ['b'])]
  calibrated = precise_bn.recalibrate(weights, batches, graphdef=precise_bn.calibration_graphdef(
      tiny_model), mesh=mesh, num_images=1)

  model = nnx.clone(tiny_model)
  model.train()
  train_output = np.asarray(model(image))
  nnx.update(model, calibrated)
  model.eval()
  np.testing.assert_allclose(np.asarray(model(image)), train_output, rtol=1e-4, atol=1e-4)

  # Only batch-norm statistics change, and each of them does.
  flat_before = dict(jax.tree_util.tree_flatten_with_path(weights)[0])
  flat_after = dict(jax.tree_util.tree_flatten_with_path(calibrated)[0])
  assert flat_before.keys() == flat_after.keys()
  for path, before in flat_before.items():
    statistic = path[-1].key in ('mean', 'var')
    assert np.array_equal(before, flat_after[path]) != statistic, path
    assert np.asarray(flat_after[path]).dtype == np.asarray(before).dtype, path


def test_a_model_without_batch_norm_is_refused():
  with pytest.raises(ValueError, match='precise_bn_images=0'):
    precise_bn.calibration_graphdef(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_a_subset_of_training_images_is_spread_over_the_split():
  """Shape-grouped order would make the first N images all of one size."""
  config = ml_collections.ConfigDict(dict(
      eval=dict(resolution='native', pad_multiple=32, pad='zero'),
      input=dict(num_channels=1, mean=100.0, std=30.0)))
  source = [{'image': np.full((32 * (1 + i % 2), 32), i, np.uint8),
             'mask': np.zeros((32 * (1 + i % 2), 32), np.uint8), 'id': f'img{i}'}
            for i in range(9)]

  def ids(num_images):
    return sorted(i for b in precise_bn.training_batches(config, source, num_images)
                  for i in b['id'] if i)

  assert ids(3) == ['img0', 'img4', 'img8']
  assert ids(-1) == ids(9) == sorted(f'img{i}' for i in range(9))
