"""irstd_jax.metrics against the reference codes.

`_reference` re-implements, in NumPy and scikit-image, what the reference
codes compute image by image (BasicIRSTD's mIoU and PD_FA, GGL-Net's nIoU and
PD_FA_2, GaNet's precision / recall / F1 and relative Pd/Fa, DNANet's
ROCMetric); the jax code is compared with it on the shared fixture and on
adversarial sets. `score` computes the metric variants by default: the same
calls check them against variants_reference.py (test_metrics_variants.py
checks that reference against pyirstdmetrics).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import measure

from conftest import load_fixture
from irstd_jax import metrics
from irstd_jax.metrics import counts
from variants_reference import assert_close
from variants_reference import of_reference
from variants_reference import of_score
from variants_reference import reference as variants_reference

EPS = np.spacing(1)


def _pd_fa_counts(pred, mask):
  """BasicIRSTD's PD_FA.update on one image: (targets, matched, false px)."""
  predicted = measure.regionprops(measure.label(pred.astype(np.int64),
                                                connectivity=2))
  targets = measure.regionprops(measure.label(mask.astype(np.int64),
                                              connectivity=2))
  true_img = np.zeros(pred.shape)
  matched = 0
  # The reference's double loop, with the inner loop vectorized: the first
  # remaining prediction (label order) closer than 3 px is taken and removed.
  centroids = np.array([r.centroid for r in predicted]).reshape(-1, 2)
  remaining = np.ones(len(predicted), bool)
  for target in targets:
    distance = np.sqrt(np.sum((centroids - np.array(target.centroid))**2, 1))
    near = np.flatnonzero(remaining & (distance < 3))
    if near.size:
      m = near[0]
      true_img[predicted[m].coords[:, 0], predicted[m].coords[:, 1]] = 1
      matched += 1
      remaining[m] = False
  return len(targets), matched, int((pred.astype(np.int64) - true_img).sum())


def _reference(preds, masks, threshold=0.5, roc=metrics.ROC_THRESHOLDS,
               curve=metrics.PD_FA_THRESHOLDS, relative=False,
               fa_variant='basicirstd'):
  inter = union = tp = fp = fn = pixels = 0
  ious = []
  pd_fa_at = (threshold,) + tuple(curve)
  targets = 0
  matched = np.zeros(len(pd_fa_at), np.int64)
  false_px = np.zeros(len(pd_fa_at), np.int64)
  roc_tp = np.zeros(len(roc))
  roc_fp = np.zeros(len(roc))
  positives = negatives = 0
  for pred, mask in zip(preds, masks):
    pred = np.asarray(pred, np.float32)
    mask = np.asarray(mask) > 0
    predicted = pred > np.float32(threshold)
    i, u = np.sum(predicted & mask), np.sum(predicted | mask)
    inter, union = inter + i, union + u
    ious.append(i / (EPS + u))
    tp, fp, fn = (tp + i, fp + np.sum(predicted & ~mask),
                  fn + np.sum(~predicted & mask))
    for k, t in enumerate(roc):
      above = pred > np.float32(t)
      roc_tp[k] += np.sum(above & mask)
      roc_fp[k] += np.sum(above & ~mask)
    positives, negatives = positives + mask.sum(), negatives + (~mask).sum()
    with np.errstate(invalid='ignore', divide='ignore'):  # max 0: as GaNet
      score = pred / np.max(pred) if relative else pred
    for k, t in enumerate(pd_fa_at):
      with np.errstate(invalid='ignore'):
        n, hit, false = _pd_fa_counts(score > np.float32(t), mask)
      matched[k] += hit
      false_px[k] += false
    targets += n
    pixels += pred.size
  if fa_variant == 'gglnet':
    pixels = np.asarray(preds[-1]).size * len(preds)
  precision, recall = tp / (EPS + tp + fp), tp / (EPS + tp + fn)
  tpr = roc_tp / (positives + 0.001)
  fpr = roc_fp / (negatives + 0.001)
  return dict(
      miou=inter / (EPS + union), niou=float(np.mean(ious)),
      precision=precision, recall=recall,
      f1=2 * precision * recall / (EPS + precision + recall),
      pd=matched[0] / targets if targets else np.nan,
      fa=false_px[0] / pixels, targets=targets, matched_targets=matched[0],
      fa_pixels=false_px[0], tpr=tpr, fpr=fpr,
      curve_pd=matched[1:] / targets if targets else matched[1:] * np.nan,
      curve_fa=false_px[1:] / pixels)


def _assert_variants(result, preds, masks, threshold=0.5,
                     curve=metrics.PD_FA_THRESHOLDS, relative=False):
  expected = variants_reference(preds, masks, (threshold,) + tuple(curve),
                                relative)
  assert_close(of_score(result, metrics.variants.KEYS), of_reference(expected),
               'variants')


def _assert_matches(result, expected):
  for key in ('targets', 'matched_targets', 'fa_pixels'):
    assert result[key] == expected[key], key
  for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'pd', 'fa'):
    np.testing.assert_allclose(result[key], expected[key], rtol=1e-6,
                               atol=1e-12, err_msg=key)
  np.testing.assert_allclose(result['roc']['tpr'], expected['tpr'], atol=1e-6)
  np.testing.assert_allclose(result['roc']['fpr'], expected['fpr'], atol=1e-6)
  np.testing.assert_allclose(result['pd_fa_curve']['pd'], expected['curve_pd'],
                             rtol=1e-12)
  np.testing.assert_allclose(result['pd_fa_curve']['fa'], expected['curve_fa'],
                             rtol=1e-12)


# -- the shared fixture ------------------------------------------------------


def test_fixture_matches_reference_outputs(shared_dir):
  data = load_fixture(shared_dir, 'metrics_sirst_v1_test.npz')
  n = len(data['ids'])
  preds = [data[f'pred/{i:04d}'] for i in range(n)]
  masks = [data[f'mask/{i:04d}'] for i in range(n)]
  result = metrics.score(preds, masks, float(data['threshold']),
                            roc_thresholds=data['roc_thresholds'])
  for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'fa'):
    np.testing.assert_allclose(result[key], float(data[f'ref/{key}']),
                               rtol=1e-6, err_msg=key)
  assert result['pd'] == float(data['ref/pd'])
  pixels = sum(p.size for p in preds)
  assert result['pixels'] == pixels
  false_pixels = float(data['ref/fa']) * pixels
  assert abs(false_pixels - round(false_pixels)) < 1e-3
  assert result['fa_pixels'] == round(false_pixels)
  np.testing.assert_allclose(result['roc']['thresholds'],
                             data['roc_thresholds'])
  np.testing.assert_allclose(result['roc']['tpr'], data['roc_tpr'], atol=1e-6)
  np.testing.assert_allclose(result['roc']['fpr'], data['roc_fpr'], atol=1e-6)


# -- adversarial sets against the NumPy / scikit-image reference ------------


def _blob(shape, center, radius):
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return (yy - center[0])**2 + (xx - center[1])**2 <= radius**2


def _noisy_set(seed, count, low=20, high=300):
  rng = np.random.default_rng(seed)
  preds, masks = [], []
  for _ in range(count):
    shape = tuple(rng.integers(low, high, 2))
    mask = np.zeros(shape, np.uint8)
    pred = rng.uniform(0, 0.1, shape).astype(np.float32)
    for _ in range(rng.integers(0, 4)):
      center = rng.integers(0, shape, 2)
      radius = rng.uniform(0.5, 4)
      mask[_blob(shape, center, radius)] = 1
      shifted = center + rng.integers(-3, 4, 2)
      pred = np.maximum(pred, _blob(shape, shifted, radius * rng.uniform(
          0.5, 1.5)) * rng.uniform(0.4, 1.0))
    pred[rng.uniform(size=shape) < 0.002] = 0.5  # exactly at the threshold
    pred[rng.uniform(size=shape) < 0.002] = rng.uniform(0.1, 0.9)
    preds.append(pred)
    masks.append(mask)
  return preds, masks


@pytest.fixture(scope='module')
def noisy_set():
  return _noisy_set(0, 24)


def test_random_set_of_mixed_sizes(noisy_set):
  preds, masks = noisy_set
  result = metrics.score(preds, masks)
  _assert_matches(result, _reference(preds, masks))
  _assert_variants(result, preds, masks)


def test_fa_variant_and_custom_thresholds(noisy_set):
  # Same numbers of thresholds as the defaults: nothing recompiles.
  preds, masks = noisy_set
  gglnet = metrics.score(preds, masks, fa_variant='gglnet')
  _assert_matches(gglnet, _reference(preds, masks, fa_variant='gglnet'))
  roc = (0.0,) + tuple(np.linspace(0.15, 0.95, 10))
  curve = (0.2, 0.4, 0.6, 0.8, 0.95)
  result = metrics.score(preds, masks, 0.4, roc_thresholds=roc,
                         pd_fa_thresholds=curve, variants=False)
  _assert_matches(result, _reference(preds, masks, 0.4, roc, curve))
  assert not set(metrics.variants.KEYS) & (set(result) |
                                           set(result['pd_fa_curve']))


def test_edge_cases():
  shape = (40, 50)
  empty = np.zeros(shape, np.float32)
  no_mask = np.zeros(shape, np.uint8)
  # Targets on the border and diagonal neighbours (one 8-connected target).
  border = np.zeros(shape, np.uint8)
  border[0, 0] = border[1, 1] = border[2, 2] = 1
  border[39, 45:50] = 1
  border[10:14, 49] = 1
  border_pred = np.zeros(shape, np.float32)
  border_pred[0, 1] = border_pred[1, 0] = 0.9  # diagonal pair: 1 component
  border_pred[39, 47:50] = 0.7
  border_pred[12, 48] = 0.51
  # A prediction between two targets: only the first target (label order)
  # takes it; the second prediction then serves the second target.
  two = np.zeros(shape, np.uint8)
  two[20, 20] = two[20, 24] = 1
  two_pred = np.zeros(shape, np.float32)
  two_pred[20, 21:24] = 0.8   # centroid (20, 22): 2 px from both targets
  two_pred[22, 23:26] = 0.8   # centroid (22, 24): 2 px from the second only
  # Greedy order: the first target takes the first candidate in label order
  # even when a later candidate is closer; the second target is then missed.
  greedy = np.zeros(shape, np.uint8)
  greedy[30, 10] = greedy[30, 14] = 1
  greedy_pred = np.zeros(shape, np.float32)
  greedy_pred[28, 12] = 0.9   # first in raster order, near both
  greedy_pred[31, 10] = 0.9   # near the first target only
  # Exactly at the threshold: negative.
  at_threshold = np.zeros(shape, np.float32)
  at_threshold[2:9, 2:9] = at_threshold[30, 30] = 0.5
  at_threshold[5, 5] = np.nextafter(np.float32(0.5), np.float32(1))
  at_mask = np.zeros(shape, np.uint8)
  at_mask[5, 5] = at_mask[30, 30] = 255
  preds = [empty, empty, border_pred.copy(), two_pred, greedy_pred,
           at_threshold, border_pred]
  masks = [no_mask, border, border, two, greedy, at_mask, no_mask]
  # Matches counted by hand, image by image.
  hand = [0, 0, 3, 2, 1, 1, 0]
  for pred, mask, hits in zip(preds, masks, hand):
    expected = _reference([pred], [mask])
    assert expected['matched_targets'] == hits
    _assert_matches(metrics.score([pred], [mask]), expected)
  result = metrics.score(preds, masks)
  _assert_matches(result, _reference(preds, masks))
  _assert_variants(result, preds, masks)


def test_hundreds_of_components_and_255_masks():
  rng = np.random.default_rng(1)
  shape = (200, 260)
  mask = (rng.uniform(size=shape) < 0.02).astype(np.uint8) * 255
  pred = np.where(rng.uniform(size=shape) < 0.03, 0.8, 0.1).astype(np.float32)
  # Shift part of the targets so that many predictions sit near them.
  pred[1:, 1:] = np.maximum(pred[1:, 1:], (mask[:-1, :-1] > 0) * 0.7)
  expected = _reference([pred], [mask])
  assert expected['targets'] > 300
  result = metrics.score([pred], [mask])
  _assert_matches(result, expected)
  _assert_variants(result, [pred], [mask])


def test_full_hd_image():
  rng = np.random.default_rng(2)
  shape = (1080, 1920)
  mask = np.zeros(shape, np.uint8)
  pred = rng.uniform(0, 0.05, shape).astype(np.float32)
  for _ in range(12):
    center = rng.integers(0, shape, 2)
    mask[_blob(shape, center, rng.uniform(1, 5))] = 1
    pred[_blob(shape, center + rng.integers(-2, 3, 2), 3)] = 0.9
  pred[500:580, 100:200] = 0.6  # one large false alarm
  result = metrics.score([pred], [mask])
  _assert_matches(result, _reference([pred], [mask]))
  _assert_variants(result, [pred], [mask])


def test_relative_pd_fa():
  preds, masks = _noisy_set(3, 10)
  # Weak maps, where Pd/Fa relative to each map's maximum differ.
  preds = [np.where(p > 0.1, p * 0.4, p * 0.05) for p in preds]
  preds[2] = np.zeros_like(preds[2])  # max 0: nothing predicted
  relative = metrics.score(preds, masks, pd_fa_relative=True)
  expected = _reference(preds, masks, relative=True)
  assert expected['matched_targets'] > _reference(preds, masks)[
      'matched_targets']
  _assert_matches(relative, expected)
  _assert_variants(relative, preds, masks, relative=True)


# -- the streaming accumulator ----------------------------------------------


def _pad_batch(preds, masks, size, height, width):
  probs = np.zeros((size, height, width), np.float32)
  mask = np.zeros((size, height, width), np.uint8)
  valid = np.zeros((size, height, width), bool)
  for i, (p, m) in enumerate(zip(preds, masks)):
    h, w = p.shape
    probs[i, :h, :w], mask[i, :h, :w], valid[i, :h, :w] = p, m, True
    probs[i, h:, :] = probs[i, :, w:] = 0.9  # padding must not count
    mask[i, h:, :] = 1
  return probs, mask, valid


def test_streaming_update_merge_compute():
  preds, masks = _noisy_set(5, 7, low=10, high=60)
  # The batch is sharded over the (fake) devices, as in a training loop.
  devices = jax.devices()[:4 if jax.device_count() >= 4 else 1]
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('data'))
  step = jax.jit(metrics.update)

  def batch(preds, masks):
    return jax.device_put(_pad_batch(preds, masks, 4, 64, 64), sharding)

  # Two "hosts", batches of 4 with a fully padded entry at the end; no Pd-Fa
  # curve (evaluate's tests cover it, with the same code).
  first = second = metrics.init(pd_fa_thresholds=())
  first = step(first, *batch(preds[:3], masks[:3]))
  second = step(second, *batch(preds[3:], masks[3:]))
  merged = metrics.merge(first, second)
  result = metrics.compute(merged)
  expected = _reference(preds, masks, curve=())
  _assert_matches(result, expected)
  assert result['images'] == 7
  assert result['pd_fa_curve']['pd'].shape == (0,)
  # A plain tree-map add (as psum across devices) merges as well.
  summed = jax.tree.map(jnp.add, first, second)
  _assert_matches(metrics.compute(summed), expected)


def test_counts_are_exact_beyond_int32():
  counter = counts.zeros()
  for _ in range(5):
    counter = counts.add(counter, jnp.int32(2**31 - 1))
  assert int(counts.to_int(counter)) == 5 * (2**31 - 1)
  doubled = counts.normalize(counter + counter)
  assert int(counts.to_int(doubled)) == 10 * (2**31 - 1)


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize('pred, mask, message', [
    (np.zeros((5, 5)), np.zeros((5, 6)), 'differs from mask shape'),
    (np.full((5, 5), np.nan), np.zeros((5, 5)), 'NaN'),
    (np.zeros((5, 5)), np.full((5, 5), 2), 'mask values'),
    (np.zeros((5, 5)), np.array([[0, 1, 255, 0, 0]] * 5), 'mask values'),
    (np.zeros((1, 5, 5)), np.zeros((1, 5, 5)), '2-D'),
    (np.full((5, 5), 1.5), np.zeros((5, 5)), 'probabilities'),
])
def test_bad_input_names_the_image(pred, mask, message):
  good = np.zeros((5, 5), np.float32)
  with pytest.raises(ValueError, match=f'Image 2: .*{message}'):
    metrics.score([good, good, pred], [good, good, mask])


def test_bad_options():
  with pytest.raises(ValueError, match='fa_variant'):
    metrics.score([np.zeros((4, 4))], [np.zeros((4, 4))], fa_variant='x')
  with pytest.raises(ValueError, match='update expects'):
    metrics.update(metrics.init(), np.zeros((2, 4, 4)), np.zeros((2, 4, 4)),
                   np.ones((2, 4, 5), bool))
