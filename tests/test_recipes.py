"""Recipes: resolving a config's input fields, and what each does to one example.

Expected values come from the official codes' rules (anchors.md) and from
independent formulas (Pillow, scipy), never from the recipes' own helpers.
"""

import numpy as np
import PIL.Image
import pytest
from scipy import ndimage

from irstd_jax import recipes
from irstd_jax.datasets import synthetic

# BasicIRSTD's utils.py: get_img_norm_cfg.
BASICIRSTD_SIRST = (101.06385040283203, 34.619606018066406)


class _Named(list):
  """A source with a dataset name and, optionally, its statistics."""

  def __init__(self, examples, name=None, mean_std=None):
    super().__init__(examples)
    self.name = name
    self.mean_std = mean_std


def _scenes(count=6, low=48, high=96, seed=7):
  """Synthetic scenes of `low` to `high` pixels as (H, W) uint8 and bool."""
  scenes = []
  for index in range(count):
    rng = synthetic.scene_rng(seed, 0, index)
    height, width = rng.integers(low, high + 1, size=2)
    image, mask, _ = synthetic.render_scene(rng, int(height), int(width))
    scenes.append((image, mask > 0))
  return scenes


def _examples(scenes):
  return [{'image': image[..., None], 'mask': mask[..., None].astype(np.uint8),
           'id': str(i)} for i, (image, mask) in enumerate(scenes)]


# -- resolve -------------------------------------------------------------------


def test_normalization_names():
  assert recipes.normalization('unit') == (0.0, 255.0)
  assert recipes.normalization('NUAA-SIRST') == recipes.normalization('sirst_v1')
  assert recipes.normalization('sirst_v1') == BASICIRSTD_SIRST
  np.testing.assert_allclose(recipes.normalization('irstd_1k'),
                             (87.466, 39.720), atol=1e-3)
  np.testing.assert_allclose(recipes.normalization('nudt-sirst'),
                             (107.809, 33.023), atol=1e-3)
  with pytest.raises(ValueError, match='known'):
    recipes.normalization('irstd_synthetic')


@pytest.mark.parametrize('recipe, dataset, size', [
    # GaNet's code: 256, or IRSTD-1k at its native 512.
    ('ganet', 'sirst_v1', 256), ('ganet', 'nudt_sirst', 256),
    ('ganet', 'irstd_1k', 512), ('ganet', 'IRSTD-1k', 512),
    ('ganet', None, 256),
    # MSDA-Net's code: 512, or 256 for NUDT-SIRST.
    ('gglnet', 'sirst_v1', 512), ('gglnet', 'nudt_sirst', 256),
    ('gglnet', 'irstd_1k', 512), ('gglnet', 'irstd_synthetic', 512),
    # BasicIRSTD: the crop.
    ('basicirstd', 'irstd_1k', 256),
])
def test_resolve_defaults(recipe, dataset, size):
  spec = recipes.resolve(recipe, dataset, normalization='unit')
  assert spec.train_size == size
  assert spec.num_channels == (3 if recipe == 'gglnet' else 1)
  assert spec.eval_resolution == 'native'
  assert recipes.train_size(recipe, dataset) == size


def test_resolve_explicit_values_win():
  spec = recipes.resolve('gglnet', 'nudt_sirst', image_size=96, crop_size=32,
                         num_channels=1, normalization=(10, 4),
                         resolution=80)
  assert (spec.train_size, spec.num_channels, spec.mean_std,
          spec.eval_resolution) == (96, 1, (10.0, 4.0), 80)
  assert isinstance(spec.mean, float) and isinstance(spec.std, float)
  spec = recipes.resolve('basicirstd', 'sirst_v1', image_size=96, crop_size=32)
  assert spec.train_size == 32  # basicirstd crops; image_size is ganet / gglnet's.


def test_resolve_normalisation_rules():
  scenes = _examples(_scenes())
  # Resizing recipes: /255.
  assert recipes.resolve('ganet', 'sirst_v1').mean_std == (0.0, 255.0)
  # basicirstd: BasicIRSTD's constants where it has them ...
  assert recipes.resolve('basicirstd', 'sirst_v1').mean_std == BASICIRSTD_SIRST
  assert recipes.resolve('basicirstd', 'sirst_v1', train_source=_Named(
      scenes, 'sirst_v1', (1.0, 2.0))).mean_std == BASICIRSTD_SIRST
  # ... else the dataset's statistics from the build ...
  assert recipes.resolve('basicirstd', 'irstd_synthetic', train_source=_Named(
      scenes, 'irstd_synthetic', (90.5, 20.25))).mean_std == (90.5, 20.25)
  # ... else measured: the mean of per-image means and of per-image stds.
  means = [image.astype(np.float64).mean() for image, _ in _scenes()]
  stds = [image.astype(np.float64).std() for image, _ in _scenes()]
  np.testing.assert_allclose(
      recipes.resolve('basicirstd', None, train_source=scenes).mean_std,
      (np.mean(means), np.mean(stds)), rtol=1e-12)
  with pytest.raises(ValueError, match='train_source'):
    recipes.resolve('basicirstd', 'irstd_synthetic')
  assert recipes.resolve('basicirstd', None,
                         normalization='nuaa_sirst').mean_std == BASICIRSTD_SIRST
  with pytest.raises(ValueError, match='std must be positive'):
    recipes.resolve('ganet', None, normalization=(3.0, 0.0))


def test_resolve_eval_resolution():
  def resolution(recipe, value, **kwargs):
    return recipes.resolve(recipe, 'nudt_sirst', resolution=value,
                           **kwargs).eval_resolution

  assert resolution('gglnet', 'native') == 'native'
  assert resolution('gglnet', 128) == 128
  assert resolution('gglnet', 'train', image_size=96) == 96
  assert resolution('basicirstd', 'train', crop_size=64) == 64
  # 'recipe': the recipe's own size for the dataset, whatever image_size says.
  assert resolution('gglnet', 'recipe', image_size=96) == 256
  assert resolution('basicirstd', 'recipe') == 'native'
  with pytest.raises(ValueError, match='resolution'):
    resolution('gglnet', 'full')


@pytest.mark.parametrize('kwargs', [
    dict(image_size=0), dict(crop_size=0), dict(num_channels=0),
    dict(resolution=0), dict(image_size=2.5)])
def test_resolve_refuses_non_positive_sizes(kwargs):
  recipe = 'basicirstd' if 'crop_size' in kwargs else 'ganet'
  with pytest.raises(ValueError, match='positive'):
    recipes.resolve(recipe, 'sirst_v1', **kwargs)


def test_resolve_refuses_unknown_recipes():
  with pytest.raises(ValueError, match='Unknown recipe'):
    recipes.resolve('unet', 'sirst_v1')


# -- One example ---------------------------------------------------------------


def _one_target_image(index, size=512):
  image = np.full((size, size), 120, np.uint8)
  mask = np.zeros((size, size), bool)
  y, x = 37 + 101 * index, 411 - 53 * index
  image[y, x], mask[y, x] = 250, True
  return image, mask


def test_basicirstd_positive_crops_alignment_and_normalisation():
  with_target = 0
  for draw in range(400):
    image, mask = _one_target_image(draw % 2)
    patch, patch_mask = recipes.basicirstd(
        image, mask, np.random.default_rng(draw), crop=64, mean=100.0,
        std=20.0)
    assert patch.shape == patch_mask.shape == (64, 64)
    assert set(np.unique(patch)) <= {1.0, 7.5}  # (120-100)/20, (250-100)/20
    np.testing.assert_array_equal(patch == 7.5, patch_mask)
    with_target += int(patch_mask.any())
  # Half the crops are chosen to hold the target; a random 64 crop of 512
  # holds it 1.6% of the time: expect ~0.51 of 400.
  assert 0.42 < with_target / 400 < 0.60, with_target / 400


@pytest.mark.parametrize('probability, low, high', [(1.0, 1.0, 1.0),
                                                    (0.0, 0.0, 0.06)])
def test_basicirstd_positive_probability_sets_the_share_of_target_crops(
    probability, low, high):
  # 1: every crop holds the target; 0: uniform crops, a 64 crop of 512
  # holds it 1.6% of the time (~6 of 400).
  with_target = sum(
      recipes.basicirstd(*_one_target_image(draw % 2),
                         np.random.default_rng(draw), crop=64, mean=100.0,
                         std=20.0, positive_probability=probability)[1].any()
      for draw in range(400))
  assert low <= with_target / 400 <= high, with_target / 400


def test_basicirstd_pads_small_images_with_zeros():
  image = np.full((20, 30), 200, np.uint8)
  mask = np.zeros((20, 30), bool)
  for draw in range(4):
    patch, _ = recipes.basicirstd(image, mask, np.random.default_rng(draw),
                                  crop=32, mean=100.0, std=50.0)
    assert (patch == 2.0).sum() == 20 * 30  # The image, flipped or not.
    assert (patch == 0.0).sum() == 32 * 32 - 20 * 30  # Zero padding.


def test_ganet_resize_matches_bilinear_reference():
  # Upsampling only (scenes are 48 to 96 px), where Pillow's bilinear filter
  # is plain half-pixel linear interpolation, like cv2's INTER_LINEAR.
  for image, mask in _scenes():
    resized, resized_mask = recipes.resize(image, mask, 128)
    out, out_mask = recipes.ganet(resized, resized_mask, None, mean=0.0,
                                  std=255.0)
    grey = PIL.Image.fromarray(image.astype(np.float32), 'F')
    reference = np.asarray(grey.resize((128, 128),
                                       PIL.Image.Resampling.BILINEAR))
    assert out.dtype == np.float32 and out.shape == (128, 128)
    assert np.abs(out - np.round(reference) / 255.0).max() <= 1.0 / 255 + 1e-6
    # cv2's INTER_NEAREST: output (i, j) takes input (floor(i H / 128), ...).
    rows, cols = (np.floor(np.arange(128) * n / 128).astype(int)
                  for n in mask.shape)
    np.testing.assert_array_equal(out_mask, mask[np.ix_(rows, cols)])


def test_gglnet_warps_match_scipy_and_keep_alignment():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (40, 56)).astype(np.float32)
  mask = rng.random((40, 56)) > 0.9
  angle = np.deg2rad(33)
  for linear, offset in [
      (np.array([[np.cos(angle), -np.sin(angle)],
                 [np.sin(angle), np.cos(angle)]]), None),
      (np.eye(2) / 0.83, None), (np.eye(2), np.array([-4.3, 5.6]))]:
    if offset is None:
      linear, offset = recipes._about_center(image.shape, linear)  # pylint: disable=protected-access
    warped, warped_mask = recipes._warp(image, mask, linear, offset)  # pylint: disable=protected-access
    np.testing.assert_allclose(
        warped, ndimage.affine_transform(image, linear, offset, order=1,
                                         mode='mirror'), atol=1e-3)
    np.testing.assert_array_equal(
        warped_mask, ndimage.affine_transform(mask.astype(np.uint8), linear,
                                              offset, order=0,
                                              mode='mirror') > 0)
  # End to end: a bright square under its mask stays under it.
  square = np.full((96, 96), 40, np.uint8)
  square_mask = np.zeros((96, 96), bool)
  square[30:50, 20:44], square_mask[30:50, 20:44] = 220, True
  changed = 0
  for draw in range(48):
    out, out_mask = recipes.gglnet(square, square_mask,
                                   np.random.default_rng(draw), mean=0.0,
                                   std=255.0)
    out_mask = np.asarray(out_mask) > 0
    assert out.dtype == np.float32 and out.shape == (96, 96)
    assert out.min() >= 0 and out.max() <= 1
    assert out[out_mask].mean() - out[~out_mask].mean() > 0.4
    changed += not np.array_equal(out_mask, square_mask)
  assert changed > 10  # Half the draws apply three ops; most move the square.


@pytest.mark.parametrize('augment', [recipes.MSDA_AUGMENT, recipes.PAL_AUGMENT])
def test_some_of_draws_three_ops_with_replacement_weighted_by_their_p(augment):
  """albumentations 1.3.0's SomeOf(ops, 3, p=0.5): with probability 0.5, three
  draws with replacement, op i with probability p_i / sum(p); each applied."""
  rng = np.random.default_rng(0)
  draws = [recipes.draw_ops(rng, augment) for _ in range(20000)]
  ran = [d for d in draws if d]
  assert all(len(d) == 3 for d in ran)
  assert abs(len(ran) / len(draws) - 0.5) < 0.015
  counts = np.bincount(np.concatenate(ran), minlength=12) / (3 * len(ran))
  weights = np.asarray(augment.weights) / sum(augment.weights)
  np.testing.assert_allclose(counts, weights, atol=0.006)
  # With replacement: the same op twice in about 1 - prod(1 - ...) of the draws.
  repeats = np.mean([len(set(d)) < 3 for d in ran])
  assert 0.2 < repeats < 0.35, repeats
  # A drawn op is applied for sure: a drawn vertical flip always flips.
  image = np.arange(12, dtype=np.float32).reshape(3, 4)
  out, _ = recipes._op(0, image, image > 5, rng, augment)  # pylint: disable=protected-access
  np.testing.assert_array_equal(out, image[::-1])


def test_pal_crops_uniformly_pads_black_and_keeps_alignment():
  """PAL's random_crop: a uniform patch (no target bias), the raw image padded
  with grey level 0 up to the crop; then its SomeOf list; then normalised."""
  image = np.full((128, 128), 120, np.uint8)
  mask = np.zeros((128, 128), bool)
  image[5, 6], mask[5, 6] = 250, True  # Near a corner: few uniform crops hold it.
  with_target = 0
  for draw in range(400):
    patch, patch_mask = recipes.pal(image, mask, np.random.default_rng(draw), crop=64,
                                    mean=100.0, std=20.0)
    patch_mask = np.asarray(patch_mask) > 0
    assert patch.shape == patch_mask.shape == (64, 64) and patch.dtype == np.float32
    if patch_mask.any():  # The bright pixel stays under the mask (flips, turns).
      assert patch[patch_mask].max() > patch[~patch_mask].max()
    with_target += int(patch_mask.any())
  # A uniform 64 crop of 128 holds pixel (5, 6) with probability 6/65 * 7/65
  # (1 %; warps move it a little); BasicIRSTD's crop would hold it half the time.
  assert with_target / 400 < 0.05, with_target / 400
  # Smaller than the crop: black (0 before normalising) fills the rest.
  small = np.full((20, 30), 200, np.uint8)

  def unaugmented(draw):  # The recipe's draws: top, left, then the SomeOf list.
    rng = np.random.default_rng(draw)
    rng.integers(0, 1), rng.integers(0, 1)
    return not recipes.draw_ops(rng, recipes.PAL_AUGMENT)

  plain = [d for d in range(200) if unaugmented(d)]
  for draw in plain[:3]:  # Draws without augmentation: the crop itself.
    patch, _ = recipes.pal(small, small > 0, np.random.default_rng(draw), crop=32,
                           mean=100.0, std=50.0)
    np.testing.assert_array_equal(patch[:20, :30], 2.0)
    assert (patch == -2.0).sum() == 32 * 32 - 20 * 30


def test_pal_augment_differs_from_msda_where_pal_changed_it():
  """PAL's list is MSDA-Net's with RandomBrightness / RandomContrast limit 0.3
  and Rotate(45) at p 0.3 (a weight 0.3 of 4.9 instead of 0.5 of 5.1)."""
  pal, msda = recipes.PAL_AUGMENT, recipes.MSDA_AUGMENT
  assert (pal.brightness, pal.contrast, msda.brightness, msda.contrast) == (0.3, 0.3, 0.2, 0.2)
  changed = [i for i, (a, b) in enumerate(zip(pal.weights, msda.weights)) if a != b]
  assert [recipes.SOME_OF_OPS[i] for i in changed] == ['rotate45']
  assert (sum(pal.weights), sum(msda.weights)) == pytest.approx((4.9, 5.1))
  assert (pal.n, pal.p) == (msda.n, msda.p) == (3, 0.5)


def test_resolve_pal_measures_the_training_split():
  scenes = _examples(_scenes())
  means = [image.astype(np.float64).mean() for image, _ in _scenes()]
  stds = [image.astype(np.float64).std() for image, _ in _scenes()]
  # The build's statistics (over every split) are not what PAL uses.
  spec = recipes.resolve('pal', 'sirst_v1', train_source=_Named(scenes, 'sirst_v1', (1.0, 2.0)))
  np.testing.assert_allclose(spec.mean_std, (np.mean(means), np.mean(stds)), rtol=1e-12)
  assert (spec.num_channels, spec.train_size, spec.eval_resolution) == (3, 256, 'native')
  with pytest.raises(ValueError, match='train_source'):
    recipes.resolve('pal', 'sirst_v1')
  assert recipes.resolve('pal', 'sirst_v1', normalization='unit').mean_std == (0.0, 255.0)
