"""Input pipeline: determinism, exact resume, process slices, sharding, buckets.

What each recipe does to one example is tested in test_recipes.py.
"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irstd_jax import datasets
from irstd_jax import input_pipeline as ip
from irstd_jax import recipes

RECIPE_SIZES = {'basicirstd': dict(crop_size=64), 'pal': dict(crop_size=64),
                'ganet': dict(image_size=64), 'gglnet': dict(image_size=64)}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """12 synthetic scenes of 48 to 96 pixels (some smaller than the crop)."""
  return datasets.load('irstd_synthetic', 'train',
                       data_dir=tmp_path_factory.mktemp('tfds'), num_train=12,
                       num_test=1, min_size=48, max_size=96, seed=7)


def _spec(source, recipe, **kwargs):
  return recipes.resolve(recipe, getattr(source, 'name', None),
                         train_source=source, **kwargs)


def _iterator(source, recipe, seed=0, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  kwargs.setdefault('batch_size', 4)
  spec = _spec(source, recipe, **RECIPE_SIZES[recipe])
  kwargs.setdefault('size', spec.train_size)
  return ip.train_iterator(source, recipe=recipe, seed=seed,
                           num_channels=spec.num_channels,
                           mean_std=spec.mean_std, **kwargs)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize('recipe', recipes.RECIPES)
def test_same_seed_same_batches_and_exact_resume(source, recipe):
  first = _iterator(source, recipe, prefetch=0)
  batches = _take(first, 5)  # 20 examples: crosses an epoch boundary (12).
  _assert_same(batches, _take(_iterator(source, recipe, prefetch=2), 5))
  channels = 3 if recipe in ('gglnet', 'pal') else 1
  assert batches[0]['image'].shape == (4, 64, 64, channels)
  assert batches[0]['mask'].shape == (4, 64, 64, 1)
  assert batches[0]['image'].dtype == batches[0]['mask'].dtype == np.float32
  assert set(np.unique(batches[0]['mask'])) <= {0.0, 1.0}
  if recipe != 'ganet':  # GaNet's recipe has no randomness but the order.
    other = _take(_iterator(source, recipe, seed=1), 5)
    assert any(not np.array_equal(a['image'], b['image'])
               for a, b in zip(batches, other))
  # Resume: a fresh iterator restored from a JSON round trip of the state
  # continues with exactly the batch that would have come next.
  state = json.loads(json.dumps(first.get_state()))
  expected = _take(first, 2)
  restored = _iterator(source, recipe)
  restored.set_state(state)
  _assert_same(expected, _take(restored, 2))
  restored.close()


@pytest.mark.parametrize('recipe', ['basicirstd', 'ganet'])
def test_final_size_takes_over_at_its_step_and_resumes_there(source, recipe):
  """Before `final_from_step` the batches are the plain iterator's; from it
  on, those of an iterator at `final_size` throughout (same order and rngs)."""
  small, large = _take(_iterator(source, recipe), 5), _take(
      _iterator(source, recipe, size=96), 5)
  mixed = _iterator(source, recipe, final_size=96, final_from_step=3)
  batches = _take(mixed, 5)
  assert [b['image'].shape[1] for b in batches] == [64, 64, 64, 96, 96]
  _assert_same(batches, small[:3] + large[3:])
  resumed = _iterator(source, recipe, final_size=96, final_from_step=3)
  resumed.set_state({**mixed.get_state(), 'step': 2})
  _assert_same(_take(resumed, 2), small[2:3] + large[3:4])
  with pytest.raises(ValueError, match='final_from_step >= 0'):
    _iterator(source, recipe, final_size=96)


def test_final_crop_share_takes_over_at_its_step(source):
  """From `final_from_step` on the crops are those of an iterator at the
  final share throughout (same rngs), and at 1.0 each holds a target."""
  half = _take(_iterator(source, 'basicirstd', positive_crop_probability=0.0), 6)
  all_on = _take(_iterator(source, 'basicirstd', positive_crop_probability=1.0), 6)
  mixed = _take(_iterator(source, 'basicirstd', positive_crop_probability=0.0,
                          final_from_step=3, final_positive_crop_probability=1.0), 6)
  _assert_same(mixed, half[:3] + all_on[3:])
  assert not all(np.array_equal(a['image'], b['image']) for a, b in zip(half[3:], all_on[3:]))
  assert all(b['mask'][i].any() for b in mixed[3:] for i in range(4))
  with pytest.raises(ValueError, match='must come with final_from_step'):
    _iterator(source, 'basicirstd', final_positive_crop_probability=1.0)
  with pytest.raises(ValueError, match=r'final_positive_crop_probability=2.0 must lie'):
    _iterator(source, 'basicirstd', final_from_step=3, final_positive_crop_probability=2.0)


def test_epochs_cover_every_example_once(source):
  # Tag each example with a distinct constant image to follow it.
  tagged = [{'image': np.full((8, 8, 1), i, np.uint8),
             'mask': np.zeros((8, 8, 1), np.uint8), 'id': str(i)}
            for i in range(10)]
  iterator = ip.train_iterator(tagged, recipe='ganet', batch_size=5, seed=3,
                               size=8, num_channels=1, mean_std=recipes.UNIT,
                               process_index=0, process_count=1)
  seen = [int(round(b['image'][j, 0, 0, 0] * 255))
          for b in _take(iterator, 4) for j in range(5)]
  assert sorted(seen[:10]) == list(range(10))
  assert sorted(seen[10:]) == list(range(10))
  assert seen[:10] != seen[10:]  # Reshuffled each epoch.
  del source


@pytest.mark.parametrize('recipe', recipes.RECIPES)
def test_batches_follow_the_documented_stream(source, recipe):
  """Batch k, slot j: example perm_e[i mod n] of stream position i = kB + j,
  through the recipe with rng SeedSequence(seed, spawn_key=(1, i)), where
  perm_e is permutation(n) under SeedSequence(seed, spawn_key=(0, e))."""
  seed, batch_size, n = 11, 5, len(source)
  spec = _spec(source, recipe, **RECIPE_SIZES[recipe])
  examples = [(e['image'][..., 0], e['mask'][..., 0] > 0) for e in source]
  batches = _take(_iterator(source, recipe, seed=seed, batch_size=batch_size),
                  4)  # 20 positions: past the first epoch (12).
  for step, batch in enumerate(batches):
    for slot in range(batch_size):
      position = step * batch_size + slot
      epoch, within = divmod(position, n)
      order = np.random.default_rng(np.random.SeedSequence(
          seed, spawn_key=(0, epoch))).permutation(n)
      image, mask = examples[order[within]]
      rng = np.random.default_rng(np.random.SeedSequence(
          seed, spawn_key=(1, position)))
      if recipe in ('basicirstd', 'pal'):
        want = getattr(recipes, recipe)(image, mask, rng, crop=spec.train_size,
                                        mean=spec.mean, std=spec.std)
      else:
        resized = recipes.resize(image, mask, spec.train_size)
        want = getattr(recipes, recipe)(*resized, rng, mean=spec.mean,
                                        std=spec.std)
      for channel in range(spec.num_channels):
        np.testing.assert_array_equal(batch['image'][slot, ..., channel],
                                      want[0])
      np.testing.assert_array_equal(batch['mask'][slot, ..., 0], want[1])


def test_entry_points_take_concrete_values(source):
  with pytest.raises(ValueError, match='recipes.resolve'):
    ip.train_iterator(source, recipe='ganet', batch_size=4, seed=0, size=None,
                      num_channels=1, mean_std=recipes.UNIT, process_index=0,
                      process_count=1)
  with pytest.raises(ValueError, match='recipes.resolve'):
    next(ip.eval_batches(source, batch_size=4, resolution='native',
                         num_channels=1, mean_std=None))
  with pytest.raises(ValueError, match='use "native" or a positive int'):
    next(ip.eval_batches(source, batch_size=4, resolution='train',
                         num_channels=1, mean_std=recipes.UNIT))


def test_process_slices_make_the_global_batch(source):
  whole = _take(_iterator(source, 'basicirstd', batch_size=8), 3)
  halves = [_take(_iterator(source, 'basicirstd', batch_size=8,
                            process_index=p, process_count=2), 3)
            for p in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])
  with pytest.raises(ValueError, match='multiple of the process count'):
    _iterator(source, 'basicirstd', batch_size=5, process_count=2)
  with pytest.raises(ValueError, match=r'positive_crop_probability=1.5 must lie'):
    _iterator(source, 'basicirstd', batch_size=8, positive_crop_probability=1.5)


def test_global_batch_sharded_on_data_axis(source):
  assert jax.device_count() == 4, 'conftest sets 4 CPU devices'
  mesh = jax.make_mesh((4,), ('data',))
  sharding = NamedSharding(mesh, P('data'))
  batch = next(_iterator(source, 'basicirstd', batch_size=8))
  sharded = ip.shard_batch(batch, sharding)
  for key in ('image', 'mask'):
    array = sharded[key]
    assert array.shape == batch[key].shape
    assert array.sharding.spec == P('data')
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 4
    for number, shard in enumerate(shards):
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    batch[key][2 * number:2 * number + 2])
  evaluation = next(ip.eval_batches(source, batch_size=4, resolution='native',
                                    num_channels=1,
                                    mean_std=_spec(source, 'basicirstd').mean_std))
  sharded = ip.shard_batch(evaluation, sharding)
  assert sharded['valid'].sharding.spec == P('data')
  assert sharded['id'] == evaluation['id']


def test_set_state_refuses_other_settings(source):
  state = _iterator(source, 'basicirstd').get_state()
  with pytest.raises(ValueError, match='global_batch_size'):
    _iterator(source, 'basicirstd', batch_size=8).set_state(state)


def test_eval_native_buckets_cover_each_image_once(source):
  batches = list(ip.eval_batches(source, batch_size=5, resolution='native',
                                 num_channels=1, mean_std=(10.0, 2.0),
                                 max_shapes=2))
  shapes = {b['image'].shape for b in batches}
  assert len(shapes) <= 2
  assert all(s[0] == 5 and s[1] % 32 == 0 and s[2] % 32 == 0 and s[3] == 1
             for s in shapes)
  truth = {e['id']: e for e in source}
  seen = []
  for batch in batches:
    for slot, example_id in enumerate(batch['id']):
      valid = batch['valid'][slot]
      if not example_id:
        assert not valid.any() and not batch['mask'][slot].any()
        continue
      seen.append(example_id)
      example = truth[example_id]
      h, w = example['image'].shape[:2]
      assert valid.sum() == h * w and valid[:h, :w].all()
      np.testing.assert_allclose(batch['image'][slot, :h, :w, 0],
                                 (example['image'][..., 0] - 10.0) / 2.0)
      np.testing.assert_array_equal(batch['mask'][slot, :h, :w],
                                    example['mask'][..., 0])
      assert not batch['image'][slot][~valid].any()
  assert sorted(seen) == sorted(truth)


def test_eval_metric_canvases_hold_every_batch_and_are_few(source):
  for max_shapes in (0, 2):
    batches = list(ip.eval_batches(source, batch_size=2, resolution='native',
                                   num_channels=1, mean_std=(10.0, 2.0),
                                   max_shapes=max_shapes))
    canvases = {b['canvas'] for b in batches}
    shapes = {b['image'].shape[1:3] for b in batches}
    assert len(canvases) == min(len(shapes), ip.METRIC_CANVASES)
    assert all(b['canvas'][0] >= b['image'].shape[1] and b['canvas'][1] >= b['image'].shape[2]
               for b in batches)
    if max_shapes and len(shapes) <= ip.METRIC_CANVASES:
      assert canvases == shapes  # Buckets are their own canvases.
  shapes = [(32, 32)] * 5 + [(32, 64), (64, 32), (64, 64), (96, 32), (32, 96)]
  canvases = ip.bucket_shapes(shapes, ip.METRIC_CANVASES)
  assert len(canvases) == 4 and (32, 32) in canvases  # The common shape is kept as it is.


def test_eval_padding_is_zero_or_black(source):
  """'zero' pads after normalising (BasicIRSTD); 'black' pads the raw image
  with grey level 0, i.e. (0 - mean) / std once normalised (PAL)."""
  assert ip.pad_value_for('zero', (10.0, 2.0)) == 0.0
  assert ip.pad_value_for('black', (10.0, 2.0)) == -5.0
  with pytest.raises(ValueError, match='eval.pad'):
    ip.pad_value_for('reflect', (10.0, 2.0))
  for pad_value in (0.0, -5.0):
    for batch in ip.eval_batches(source, batch_size=5, resolution='native',
                                 num_channels=3, mean_std=(10.0, 2.0),
                                 pad_value=pad_value):
      padding = ~batch['valid']
      assert padding.any()
      assert np.all(batch['image'][padding] == pad_value)
      assert not batch['mask'][padding].any()


def test_eval_resized_mode(source):
  spec = _spec(source, 'gglnet', resolution=64)
  batches = list(ip.eval_batches(source, batch_size=8,
                                 resolution=spec.eval_resolution,
                                 num_channels=spec.num_channels,
                                 mean_std=spec.mean_std))
  assert [b['image'].shape for b in batches] == [(8, 64, 64, 3)] * 2
  assert sum(bool(i) for b in batches for i in b['id']) == len(source)
  assert batches[0]['valid'].all()
  assert batches[0]['image'].max() <= 1.0
  truth = {e['id']: e for e in source}
  for batch in batches:
    for slot, example_id in enumerate(batch['id']):
      if example_id:
        example = truth[example_id]
        image, mask = recipes.resize(example['image'][..., 0],
                                     example['mask'][..., 0] > 0, 64)
        for channel in range(3):
          np.testing.assert_array_equal(batch['image'][slot, ..., channel],
                                        recipes.normalize(image, 0.0, 255.0))
        np.testing.assert_array_equal(batch['mask'][slot], mask)


def test_steps_and_buckets():
  assert ip.steps_per_epoch(341, 16) == 22
  assert ip.steps_per_epoch(3, 16) == 1
  shapes = [(224, 320), (224, 352), (256, 320), (416, 608), (96, 160)] * 3
  buckets = ip.bucket_shapes(shapes, 3)
  assert len(buckets) <= 3
  for shape in shapes:
    assert any(b[0] >= shape[0] and b[1] >= shape[1] for b in buckets)
