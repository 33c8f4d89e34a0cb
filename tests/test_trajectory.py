"""benchmarks/trajectory.py: its batches and report without torch, and its core
against the official code when a checkout is named.

The official-code case needs torch and a checkout, named by an environment
variable (`trajectory.OFFICIAL_ENV`):
  IRSTD_GANET_OFFICIAL=PATH/TO/Gradient-Transformer
  IRSTD_GGLNET_OFFICIAL=PATH/TO/MSDA-Net
"""

import os

import numpy as np
import pytest

from benchmarks import trajectory


def _toy_split():
  """Five images of distinct grey levels, targets at known places; one is
  smaller than the crop and one has no target."""
  shapes = [(40, 50), (64, 64), (20, 30), (48, 40), (36, 36)]
  images, masks = [], []
  for k, shape in enumerate(shapes):
    images.append(np.full(shape, 10 * (k + 1), np.uint8))
    mask = np.zeros(shape, np.uint8)
    if k != 4:
      mask[shape[0] - 3, shape[1] - 2] = 1  # near the bottom-right corner
    masks.append(mask)
  return images, masks


def test_batches_are_reproducible_crops_around_targets():
  images, masks = _toy_split()
  kwargs = dict(steps=5, batch=2, size=32, channels=3)
  batches = trajectory.sample_batches(images, masks, seed=7, **kwargs)
  again = trajectory.sample_batches(images, masks, seed=7, **kwargs)
  other = trajectory.sample_batches(images, masks, seed=8, **kwargs)
  assert len(batches) == 5
  for (x, y), (x2, y2) in zip(batches, again):
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(batches, other))
  seen = []
  for x, y in batches:
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (2, 32, 32, 1) and set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey, repeated
    for image, mask in zip(x, y):
      level = int(round(image.max() * 255))  # which image this crop came from
      seen.append(level // 10 - 1)
      # A crop of an image with a target holds it; the /255 scaling is exact.
      assert mask.sum() == (1 if level != 50 else 0)
      assert set(np.unique(np.round(image * 255))) <= {0.0, float(level)}
  # Per-epoch permutations: every image once before any image twice.
  assert sorted(seen[:5]) == [0, 1, 2, 3, 4] and sorted(seen[5:]) == [0, 1, 2, 3, 4]


def test_small_images_are_padded_and_eval_crops_hold_targets():
  images, masks = _toy_split()
  crop, mask = trajectory.crop_around_target(images[2], masks[2], 32,
                                             np.random.default_rng(0))
  assert crop.shape == mask.shape == (32, 32)
  assert mask.sum() == 1
  assert (crop[20:] == 0).all() and (crop[:, 30:] == 0).all()  # zero padding
  x = trajectory.eval_crops(images, masks, count=10, size=32, channels=1, seed=0)
  assert x.shape == (4, 32, 32, 1)  # the four images with a target


def test_move_shifts_every_pixel_by_the_amount():
  x = np.random.default_rng(0).random((2, 8, 8, 1), np.float32)
  moved = trajectory.move(x, 1e-6, seed=3)
  delta = moved.astype(np.float64) - x
  # float32 rounding near 1 is 6e-8.
  np.testing.assert_allclose(np.abs(delta), 1e-6, atol=6e-8)
  assert (delta > 0).any() and (delta < 0).any()
  np.testing.assert_array_equal(trajectory.move(x, 1e-6, seed=3), moved)
  assert trajectory.move(x, 0.0, seed=3) is x


def test_noise_images_are_grey_and_reproducible():
  x = np.zeros((2, 16, 16, 3), np.float32)
  noise = trajectory.noise_like(x, seed=1)
  assert noise.shape == x.shape and noise.dtype == np.float32
  assert 0 <= noise.min() and noise.max() < 1 and noise.std() > 0.2
  np.testing.assert_array_equal(noise[..., 0], noise[..., 2])
  np.testing.assert_array_equal(trajectory.noise_like(x, seed=1), noise)
  # Continuous values: no two equal pixels, so no ties in max pooling.
  assert len(np.unique(noise[..., 0])) == noise[..., 0].size


def test_tensor_comparisons():
  start = {'w': np.ones(4), 'b': np.zeros(2)}
  ref = {'w': np.full(4, 2.0), 'b': np.zeros(2)}  # training moved w by 1, b not at all
  run = {'w': np.array([2.0, 2.0, 2.0, 2.5]), 'b': np.zeros(2)}
  per_tensor = trajectory.relative_differences(run, ref, start)
  assert per_tensor == {'b': 0.0, 'w': pytest.approx(0.25)}
  assert trajectory.relative_differences({'b': np.ones(2)}, ref, start) == {'b': np.inf}
  summary = trajectory.compare_tensors(run, ref, start)
  assert summary['tensor'] == 'w' and summary['max'] == pytest.approx(0.25)
  assert summary['overall'] == pytest.approx(0.25)
  assert summary['median'] == pytest.approx(0.125)
  assert trajectory.output_difference(np.array([0.2, 0.6, 0.49]),
                                      np.array([0.2, 0.4, 0.51])) == {
                                          'max_abs': pytest.approx(0.2),
                                          'decision_flips': pytest.approx(2 / 3)}


def _fake_runs():
  grads = {'w': np.array([1.0, 2.0])}
  params = {'w': np.array([0.5, 0.5])}
  def one(losses, shift=0.0, eval_p=0.3):
    return {'losses': losses, 'grads': {'w': grads['w'] + shift},
            'params': {'w': params['w'] + shift}, 'eval': np.full((1, 2, 2, 1), eval_p)}
  return {'torch64': one([0.9, 0.8]), 'torch32': one([0.9, 0.8 + 1e-7]),
          'torch32_moved': one([0.9 + 1e-6, 0.8 - 1e-5], 1e-3),
          'jax_default': one([0.9, 0.8 + 2e-7], 0.0, 0.6)}


def test_summary_and_markdown_report_every_pair():
  runs = _fake_runs()
  summary = trajectory.summarize(runs, {'w': np.zeros(2)})
  assert summary['pairs'] == ['torch32 vs torch64', 'torch32_moved vs torch32',
                              'jax_default vs torch32', 'jax_default vs torch64']
  spread = summary['torch32_moved vs torch32']
  np.testing.assert_allclose(spread['loss_abs_diff'], [1e-6, 1e-5 + 1e-7], rtol=1e-6)
  assert spread['loss_abs_diff_max'] == pytest.approx(1.01e-5, rel=1e-6)
  assert summary['jax_default vs torch64']['loss_abs_diff_max'] == pytest.approx(2e-7, rel=1e-6)
  assert summary['jax_default vs torch32']['eval'] == {
      'max_abs': pytest.approx(0.3), 'decision_flips': 1.0}
  assert summary['torch32 vs torch64']['grads_step1']['overall'] == 0.0
  result = {'setup': dict(model='toy', steps=2, batch=1, size=32, seed=0),
            'runs': runs, 'summary': summary}
  table = trajectory.markdown(result)
  lines = table.splitlines()
  assert lines[0] == '### toy: 2 steps, batch 1, 32x32 crops, seed 0'
  header = lines[2][2:-2].split(' | ')
  assert 'loss jax_default' in header and '\\|jax_default−t64\\|' in header
  step2 = lines[5][2:-2].split(' | ')
  assert step2[0] == '2' and step2[2] == '0.800000' and step2[3] == '0.800000'
  assert '| jax_default vs torch64 | 2.00e-07 |' in table
  assert len([l for l in lines if l.startswith('| torch32')]) == 2


def test_parse_args_checks_the_size():
  with pytest.raises(SystemExit):
    trajectory.parse_args(['--model', 'ganet', '--official', '.', '--size', '100'])
  args = trajectory.parse_args(['--model', 'gglnet', '--official', '.'])
  assert (args.steps, args.batch, args.size) == (32, 4, 128)


def test_reads_sirst_v1_splits(shared_dir):
  root = shared_dir / 'datasets' / 'sirst_v1'
  if not root.is_dir():
    pytest.skip(f'{root} is absent.')
  images, masks, names = trajectory.load_split(root, 'test')
  assert len(images) == len(masks) == len(names) == 86
  for image, mask in zip(images, masks):
    assert image.dtype == np.uint8 and image.ndim == 2
    assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
  assert sum(m.any() for m in masks) == 86


@pytest.mark.parametrize('name', ['ganet', 'gglnet'])
def test_trains_like_the_official_code(name, shared_dir):
  """A few steps at 32x32 from the same weights: the losses and eval outputs
  agree within the official code's own float32 / float64 / moved-input spread."""
  pytest.importorskip('torch')
  env = trajectory.OFFICIAL_ENV[name]
  official = os.environ.get(env)
  if not official:
    pytest.skip(f'set {env} to a checkout of the official code to run this.')
  result = trajectory.run(name, official, steps=3, batch=2, size=32, eval_images=2,
                          data=shared_dir / 'datasets' / 'sirst_v1', log=lambda _: None)
  summary = result['summary']
  ours, exact = summary['jax_default vs torch32'], summary['jax_default vs torch64']
  spread = max(summary['torch32 vs torch64']['loss_abs_diff_max'],
               summary['torch32_moved vs torch32']['loss_abs_diff_max'])
  assert ours['loss_abs_diff_first'] < 1e-5  # same weights, same batch
  assert exact['loss_abs_diff_max'] <= spread + 1e-5
  assert ours['eval']['max_abs'] < 1e-2
