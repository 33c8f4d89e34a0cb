"""The metric variants (irstd_jax.metrics.variants) against two references.

* pyirstdmetrics 1.0.2 itself, through fixtures: the shared SIRST one
  (../shared/fixtures/metrics_variants_sirst_v1_test.npz) and
  tests/fixtures/pyirstdmetrics_cases.npz, which its script scored on the sets
  of variant_cases.py (pyirstdmetrics needs numpy < 2: no test dependency).
* variants_reference.py: a plain NumPy / scikit-image / scipy rewrite of the
  rules from pixel masks, itself checked against the fixtures here, for what
  the library cannot run: streaming with padding and sharding (here), the
  relative variant and the adversarial sets of test_metrics.py (which checks
  the variants on its own `score` calls, so that nothing compiles twice).
"""

import pathlib

import jax
import numpy as np
import pytest

from conftest import load_fixture
from irstd_jax import metrics
import variant_cases
from variants_reference import assert_close
from variants_reference import of_reference
from variants_reference import of_score
from variants_reference import reference

HERE = pathlib.Path(__file__).resolve().parent
CURVE = tuple(i / 10 for i in range(10))  # pyirstdmetrics' num_bins=10
KEYS = metrics.variants.KEYS
# Our key -> the library's (class, metric).
LIBRARY = dict(
    pd=('pdfa_distance', 'probability_detection'),
    fa=('pdfa_distance', 'false_alarm'),
    pd_shooting=('pdfa_shooting', 'probability_detection'),
    fa_shooting=('pdfa_shooting', 'false_alarm'),
    pd_opdc=('match_opdc', 'probability_detection'),
    fa_opdc=('match_opdc', 'false_alarm'),
    hiou=('match_opdc', 'hiou'),
    hiou_distance=('match_distance', 'hiou'),
    **{k: ('hiou_errors', k) for k in KEYS if k.startswith(('seg', 'loc'))})


# -- comparisons --------------------------------------------------------------


def _library(data, name):
  """{our key: (value at 0.5, curve)} of one set of the case fixture."""
  row = {str(k): i for i, k in enumerate(data['metrics'])}
  return {k: (float(data[f'{name}/values'][row[f'{c}/{m}']]),
              data[f'{name}/curves'][row[f'{c}/{m}']])
          for k, (c, m) in LIBRARY.items()}


@pytest.fixture(scope='module')
def library_cases():
  path = HERE / 'fixtures' / 'pyirstdmetrics_cases.npz'
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope='module')
def case_sets():
  return variant_cases.sets()


def test_sirst_fixture_equals_pyirstdmetrics(shared_dir):
  """The shared fixture at 0.5 and over 0.1, ..., 0.9 (0 is a slow test)."""
  data = load_fixture(shared_dir, 'metrics_sirst_v1_test.npz')
  ref = load_fixture(shared_dir, 'metrics_variants_sirst_v1_test.npz')
  n = len(data['ids'])
  preds = [data[f'pred/{i:04d}'] for i in range(n)]
  masks = [data[f'mask/{i:04d}'] for i in range(n)]
  curve = tuple(ref['curve_thresholds'][1:])
  result = metrics.score(preds, masks, float(ref['threshold']),
                         pd_fa_thresholds=curve)
  for key, (cls, name) in LIBRARY.items():
    np.testing.assert_allclose(result[key], float(ref[f'{cls}/{name}']),
                               rtol=0, atol=1e-12, err_msg=key)
  assert result['pd'] == float(ref['match_distance/probability_detection'])
  assert result['fa'] == float(ref['match_distance/false_alarm'])
  c = result['pd_fa_curve']
  for ours, theirs in (('pd', 'curve_distance_pd'), ('fa', 'curve_distance_fa'),
                       ('hiou', 'curve_opdc_hiou')):
    np.testing.assert_allclose(c[ours], ref[theirs][1:], rtol=0, atol=1e-12,
                               err_msg=ours)


@pytest.mark.slow
def test_sirst_fixture_curve_at_zero(shared_dir):
  """Threshold 0: every pixel of the perturbed maps is predicted (slow)."""
  data = load_fixture(shared_dir, 'metrics_sirst_v1_test.npz')
  ref = load_fixture(shared_dir, 'metrics_variants_sirst_v1_test.npz')
  n = len(data['ids'])
  result = metrics.score([data[f'pred/{i:04d}'] for i in range(n)],
                         [data[f'mask/{i:04d}'] for i in range(n)],
                         pd_fa_thresholds=(0.0,))
  c = result['pd_fa_curve']
  for ours, theirs in (('pd', 'curve_distance_pd'), ('fa', 'curve_distance_fa'),
                       ('hiou', 'curve_opdc_hiou')):
    np.testing.assert_allclose(c[ours], ref[theirs][:1], rtol=0, atol=1e-12,
                               err_msg=ours)


def test_case_fixture_is_current(library_cases, case_sets):
  """The committed fixture scored exactly these sets (variant_cases.py)."""
  for name, (preds, masks) in case_sets.items():
    assert str(library_cases[f'{name}/sha256']) == variant_cases.digest(
        preds, masks), f'{name}: rerun tests/fixtures/make_pyirstdmetrics_cases.py'


def test_reference_equals_pyirstdmetrics(library_cases, case_sets):
  """The NumPy reference of this file is the library's rules."""
  for name, (preds, masks) in case_sets.items():
    at = reference(preds, masks)
    over = reference(preds, masks, CURVE)
    ours = {k: (float(at[k][0]), over[k]) for k in at}
    assert_close(ours, _library(library_cases, name), name)


def test_score_equals_pyirstdmetrics(library_cases, case_sets):
  """Every hand-drawn case alone, all together, and two random crowds."""
  for name, (preds, masks) in case_sets.items():
    result = metrics.score(preds, masks, pd_fa_thresholds=CURVE)
    assert_close(of_score(result), _library(library_cases, name), name)


def test_hand_made_cases_hit_their_rule(library_cases):
  """Each drawn case exercises what it claims (read off the library)."""
  def value(case, key):
    return _library(library_cases, f'hand/{case}')[key][0]
  assert value('merge', 'seg_mrg_err') > 0 and value('merge', 'loc_s2m_err') > 0
  assert value('split', 'loc_m2s_err') > 0
  assert value('empty', 'loc_pcp_err') == value('empty', 'loc_itf_err') == 0.5
  assert value('iou_half', 'pd_opdc') == 1 > value('iou_half', 'pd')
  assert value('global_assignment', 'hiou') == 0 < value(
      'global_assignment', 'hiou_distance')
  assert value('distance_three', 'pd_shooting') == 0
  assert value('shooting_boxes', 'pd_shooting') == 0.5
  assert value('shooting_boxes', 'fa_shooting') * np.prod(
      variant_cases.SHAPE) == 1


# -- what the library cannot run ----------------------------------------------


def _padded_batch(preds, masks, size, height, width):
  probs = np.zeros((size, height, width), np.float32)
  mask = np.zeros((size, height, width), np.uint8)
  valid = np.zeros((size, height, width), bool)
  for i, (p, m) in enumerate(zip(preds, masks)):
    h, w = p.shape
    top, left = i % 3, (2 * i) % 5  # Images away from the corner, too.
    probs[i] = 0.9   # Padding must not count, join or be near anything.
    mask[i] = 1
    probs[i, top:top + h, left:left + w] = p
    mask[i, top:top + h, left:left + w] = m
    valid[i, top:top + h, left:left + w] = True
  return probs, mask, valid


def test_streaming_with_padding_sharding_and_merge():
  preds, masks = variant_cases.clustered(7, 7)
  preds, masks = [p[:40, :40] for p in preds], [m[:40, :40] for m in masks]
  devices = jax.devices()[:4 if jax.device_count() >= 4 else 1]
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharded = jax.sharding.NamedSharding(mesh, jax.P('data'))
  curve = (0.3, 0.7)
  halves = []
  for part in (slice(0, 3), slice(3, 7)):
    batch = jax.device_put(_padded_batch(preds[part], masks[part], 4, 48, 48),
                           sharded)
    halves.append(metrics.variants.update(
        metrics.variants.init(0.5, curve), *batch))
  merged = metrics.variants.merge(*halves)
  assert int(merged.counts['images']) == 7
  result = metrics.variants.compute(merged)
  ours = {k: (result[k], result['curve'][k]) for k in KEYS}
  assert_close(ours, of_reference(reference(preds, masks, (0.5,) + curve)),
               'streaming')
  with pytest.raises(ValueError, match='thresholds'):
    metrics.variants.merge(merged, metrics.variants.init(0.4, curve))


def test_compute_checks_the_thresholds():
  stats = metrics.init(pd_fa_thresholds=(0.3,))
  with pytest.raises(ValueError, match='other Pd/Fa thresholds'):
    metrics.compute(stats, metrics.variants.init(0.5, (0.7,)))
