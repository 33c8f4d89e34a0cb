"""evaluate's per-target table: which targets a model misses, by the Pd rule it is scored with.

(The command line, file reading and mismatch lists are tested with predict's
outputs in test_predict.py.)
"""

import csv

import numpy as np

from irstd_jax import evaluate
from irstd_jax import metrics


def _square(array, top, left, height, width, value=1.0):
  array[top:top + height, left:left + width] = value


def _hand_built():
  mask = np.zeros((48, 64), np.uint8)
  pred = np.zeros((48, 64), np.float32)
  _square(mask, 5, 5, 3, 3)            # Centre (6, 6); predicted 2 px below: found.
  _square(pred, 7, 5, 3, 3, 0.8)
  _square(mask, 2, 14, 2, 12)          # An extended target segmented in part: its
  _square(pred, 2, 14, 2, 3, 0.9)      # centre (2.5, 19.5), the blob's (2.5, 15).
  _square(mask, 20, 20, 3, 3)          # Predicted 4 px below: missed.
  _square(pred, 24, 20, 3, 3, 0.7)
  _square(mask, 12, 2, 1, 1)           # Two targets near one blob: the first
  _square(mask, 12, 5, 1, 1)           # in label order claims it.
  _square(pred, 12, 3, 1, 2, 0.6)
  _square(pred, 28, 28, 2, 2, 0.4)     # Below the threshold: no component.
  return pred, mask


def test_each_target_is_listed_with_whether_pd_found_it():
  pred, mask = _hand_built()
  rows = evaluate.target_rows(['a'], [pred], [mask])

  assert [(r['row'], r['col'], r['area'], r['found']) for r in rows] == [
      (2.5, 19.5, 24, False), (6.0, 6.0, 9, True), (12.0, 2.0, 1, True),
      (12.0, 5.0, 1, False), (21.0, 21.0, 9, False)]
  assert [r['peak'] for r in rows] == [0.9, 0.8, 0.0, 0.0, 0.0]  # On the target's pixels.
  assert [r['distance'] for r in rows] == [4.5, 2.0, 1.5, 1.5, 4.0]
  assert rows[0]['image'] == 'a' and [r['target'] for r in rows] == [1, 2, 3, 4, 5]
  assert evaluate.target_rows(['b'], [np.zeros_like(pred)], [mask])[0]['distance'] is None


def test_found_targets_add_up_to_the_metrics_pd_on_random_maps():
  """The metric's own matching (in JAX) agrees, the hand-built cases included."""
  rng = np.random.default_rng(0)
  pred, mask = _hand_built()
  names, preds, masks = ['hand_built'], [pred], [mask]
  for i in range(8):
    mask = np.zeros((48, 64), np.uint8)
    pred = rng.uniform(0.0, 0.3, (48, 64)).astype(np.float32)
    for _ in range(rng.integers(1, 6)):
      top, left = rng.integers(0, 44), rng.integers(0, 60)
      height, width = rng.integers(1, 5, size=2)
      _square(mask, top, left, height, width)
      if rng.random() < 0.7:  # Found, roughly, or shifted away.
        shift = rng.integers(-4, 5, size=2)
        _square(pred, max(0, top + shift[0]), max(0, left + shift[1]), height, width,
                rng.uniform(0.5, 1.0))
    for _ in range(rng.integers(0, 3)):  # False alarms.
      _square(pred, rng.integers(0, 46), rng.integers(0, 62), 2, 2, 0.9)
    names.append(f'img{i}')
    preds.append(pred)
    masks.append(mask)

  rows = evaluate.target_rows(names, preds, masks)
  score = metrics.score(preds, masks)
  assert len(rows) == score['targets']
  assert sum(r['found'] for r in rows) == score['matched_targets']
  assert 0 < score['matched_targets'] < score['targets']  # Both kinds occur.


def test_written_as_targets_csv(tmp_path):
  mask = np.zeros((16, 16), np.uint8)
  _square(mask, 4, 4, 2, 2)
  result = {'targets': evaluate.target_rows(['x'], [mask.astype(np.float32)], [mask]),
            'kind': 'binary', 'metrics': {}}
  written = evaluate.write(result, str(tmp_path))
  with open(tmp_path / 'ground_truth_targets.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert str(tmp_path / 'ground_truth_targets.csv') in written
  assert rows == [{'image': 'x', 'target': '1', 'row': '4.5', 'col': '4.5', 'area': '4',
                   'peak': '1.0', 'found': 'True', 'distance': '0.0'}]


def test_a_roc_that_stops_short_is_flagged():
  """Exact zeros are never positive (p > t): the AUC then covers part of the curve."""
  rng = np.random.default_rng(0)
  mask = np.zeros((32, 32), np.uint8)
  _square(mask, 10, 10, 3, 3)
  quantised = np.where(mask > 0, 0.9, 0.0).astype(np.float32)
  quantised[0, :8] = 0.3  # A few non-zero background pixels.
  scores = metrics.score([quantised], [mask], 0.5)
  assert np.max(scores['roc']['fpr']) < 0.01
  note = evaluate.roc_note(scores, [quantised])  # 1007 of 1024 pixels are 0.
  assert note is not None and '98.3% of the map pixels are exactly 0' in note, note
  smooth = rng.uniform(0.01, 0.4, (32, 32)).astype(np.float32)
  assert evaluate.roc_note(metrics.score([smooth], [mask], 0.5), [smooth]) is None
