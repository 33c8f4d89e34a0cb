"""metrics.explain: per-image verdicts that add up to pyirstdmetrics' numbers.

The case fixture (tests/fixtures/pyirstdmetrics_cases.npz, pyirstdmetrics
1.0.2 on the sets of variant_cases.py) gives every rule's Pd and Fa over
each set; the verdicts of `explain`, counted over the same set, must give
them. Nothing compiles here (host NumPy and scipy only).
"""

import pathlib

import numpy as np
import pytest

from irstd_jax import metrics
import variant_cases

HERE = pathlib.Path(__file__).resolve().parent
# Our rule -> the library's classes of its Pd and Fa (see test_metrics_variants).
LIBRARY = {'distance': 'pdfa_distance', 'shooting': 'pdfa_shooting', 'opdc': 'match_opdc'}


@pytest.fixture(scope='module')
def library_cases():
  with np.load(HERE / 'fixtures' / 'pyirstdmetrics_cases.npz') as data:
    return {k: data[k] for k in data.files}


def _library(data, name, rule):
  row = {str(k): i for i, k in enumerate(data['metrics'])}
  values = data[f'{name}/values']
  return (float(values[row[f'{LIBRARY[rule]}/probability_detection']]),
          float(values[row[f'{LIBRARY[rule]}/false_alarm']]))


def _counted(preds, masks, rule):
  """(Pd, Fa) of a set from the per-image verdicts."""
  detected = targets = false_pixels = pixels = phantoms = 0
  for pred, mask in zip(preds, masks):
    found = metrics.explain(pred, mask)
    detected += int(found.detected[rule].sum())
    targets += found.num_targets
    false_pixels += int(found.false_alarms[rule].sum())
    pixels += mask.size
    # pyirstdmetrics' OPDC table of an image without targets has one row.
    phantoms += rule == 'opdc' and found.num_targets == 0
  return detected / max(targets + phantoms, 1), false_pixels / pixels


@pytest.mark.parametrize('rule', ['distance', 'shooting', 'opdc'])
def test_verdicts_add_up_to_the_library(library_cases, rule):
  for name, (preds, masks) in variant_cases.sets().items():
    pd, fa = _counted(preds, masks, rule)
    expected_pd, expected_fa = _library(library_cases, name, rule)
    assert pd == pytest.approx(expected_pd, abs=1e-12), (name, rule, 'pd')
    assert fa == pytest.approx(expected_fa, abs=1e-12), (name, rule, 'fa')


def test_drawn_cases_of_the_docs():
  """docs/metrics_variants.md, 'Which region counts'."""
  found = metrics.explain(*variant_cases.merge())
  # Top pair: one prediction over two targets, centroid 2.5 px from each.
  assert list(found.detected['distance'][:2]) == [True, False]
  assert list(found.detected['shooting'][:2]) == [True, True]
  assert list(found.detected['opdc'][:2]) == [True, False]
  assert found.pairs['distance'][0] == (0, 0)
  found = metrics.explain(*variant_cases.shooting_boxes())
  assert found.detected['distance'].all() and found.detected['shooting'].sum() == 1
  assert found.false_alarms['distance'].sum() == 3
  assert found.false_alarms['shooting'].sum() == 1
  found = metrics.explain(*variant_cases.iou_half())
  # Half (and 0.6) of a 1x20 target, centroids 5 (4) px apart; a 1x4 target half covered.
  assert list(found.detected['distance']) == [False, False, True]
  assert found.detected['opdc'].all() and found.detected['shooting'].all()
  assert found.false_alarms['distance'].sum() == 22 and not found.false_alarms['opdc'].any()


def test_labels_centroids_and_empty_images():
  pred = np.zeros((6, 8), np.float32)
  mask = np.zeros((6, 8), np.uint8)
  found = metrics.explain(pred, mask)
  assert found.num_targets == found.num_predicted == 0
  assert all(not f.any() for f in found.false_alarms.values())
  mask[1:3, 1:4] = 255  # {0, 255} masks count too.
  pred[4, 6] = 0.9
  found = metrics.explain(pred, mask)
  assert found.targets.max() == 1 and found.predicted[4, 6] == 1
  np.testing.assert_array_equal(found.target_centroids, [[1.5, 2.0]])
  np.testing.assert_array_equal(found.predicted_centroids, [[4.0, 6.0]])
  for rule in ('distance', 'opdc'):
    assert not found.detected[rule].any() and found.false_alarms[rule].sum() == 1
  # 4 px from the target's nearest pixel (2, 3): within the shooting rule's 9x9 box.
  assert not found.detected['shooting'].any() and not found.false_alarms['shooting'].any()
  pred[2, 4] = 0.5  # at the threshold: not predicted (strict >)
  assert metrics.explain(pred, mask).num_predicted == 1
  with pytest.raises(ValueError, match='one'):
    metrics.explain(pred[None], mask[None])
