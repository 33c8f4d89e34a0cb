"""What each Pd / Fa rule counted on one image: for pictures and questions.

`score` and the evaluation give counts over a set. `explain(pred, mask)`
shows, for one image, what lies behind them under each rule of
docs/metrics_variants.md: the targets (components of the mask), the
predictions (components of `pred > threshold`), which targets each rule
counts as detected and which pixels it counts as false alarms.

    found = metrics.explain(pred, mask)
    found.detected['shooting']       # (num_targets,) bool
    found.false_alarms['opdc']       # (H, W) bool
    found.pairs['distance']          # matched (target, prediction) indices

Rules: 'distance' (BasicIRSTD's `pd` / `fa`), 'shooting' (`pd_shooting`,
`fa_shooting`) and 'opdc' (`pd_opdc`, `fa_opdc`). The assignments are those
of `variants` (the same scipy calls on the same tables), so over a set the
counts give `score`'s values, with one exception kept from pyirstdmetrics:
OPDC counts an image without targets as one missed target (`pd_opdc`).

Host-side NumPy and scipy, one image at a time: for looking, not for speed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from irstd_jax.metrics import variants

RULES = ('distance', 'shooting', 'opdc')
_EIGHT_CONNECTED = np.ones((3, 3), bool)
# The shooting rule's boxes: a hit within 1 px of a target pixel (3x3), a
# false alarm farther than 4 px from every target pixel (9x9).
_HIT_BOX = np.ones((3, 3), bool)
_NEAR_BOX = np.ones((9, 9), bool)


@dataclasses.dataclass
class Explanation:
  """One image under every rule. Targets and predictions are numbered in
  label order (raster order of their first pixel), from 0."""
  targets: np.ndarray        # (H, W) int32: 0 background, i + 1 on target i
  predicted: np.ndarray      # (H, W) int32: 0 elsewhere, j + 1 on prediction j
  target_centroids: np.ndarray     # (M, 2) float64 (row, column)
  predicted_centroids: np.ndarray  # (N, 2)
  detected: dict[str, np.ndarray]      # rule -> (M,) bool
  false_alarms: dict[str, np.ndarray]  # rule -> (H, W) bool, the pixels its Fa counts
  pairs: dict[str, list[tuple[int, int]]]  # 'distance', 'opdc': (target, prediction)

  @property
  def num_targets(self) -> int:
    return len(self.target_centroids)

  @property
  def num_predicted(self) -> int:
    return len(self.predicted_centroids)


def _centroids(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """Exact centroids (integer sums, one division) and areas of labels 1..count."""
  rows, cols = np.nonzero(labels)
  owner = labels[rows, cols]
  area = np.bincount(owner, minlength=count + 1)[1:]
  sums = [np.bincount(owner, weights=axis, minlength=count + 1)[1:] for axis in (rows, cols)]
  return np.stack(sums, axis=1) / np.maximum(area, 1)[:, None], area


def explain(pred, mask, threshold: float = 0.5) -> Explanation:
  """Each rule's verdict on one (H, W) prediction against its mask.

  Args:
    pred: probabilities (any float; compared in float32, strictly above
      `threshold`, as `score` does).
    mask: ground truth; pixels > 0.5 are target pixels ({0, 1} or {0, 255}).
    threshold: the probability threshold.

  Returns:
    An `Explanation`.
  """
  pred = np.asarray(pred, np.float32)
  mask = np.asarray(mask)
  if pred.ndim != 2 or pred.shape != mask.shape:
    raise ValueError(f'explain takes one (H, W) map and its mask, got {pred.shape} '
                     f'and {mask.shape}.')
  on = pred > np.float32(threshold)
  truth = mask > 0.5
  targets, m = ndimage.label(truth, _EIGHT_CONNECTED)
  predicted, n = ndimage.label(on, _EIGHT_CONNECTED)
  t_centroids, t_area = _centroids(targets, m)
  p_centroids, p_area = _centroids(predicted, n)

  pairs = {'distance': [], 'opdc': []}
  if m and n:
    distance = variants._distances(t_centroids, p_centroids)  # pylint: disable=protected-access
    both = truth & on
    inter = np.zeros((m, n), np.int64)
    np.add.at(inter, (targets[both] - 1, predicted[both] - 1), 1)
    union = t_area[:, None] + p_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros((m, n)), where=inter > 0)
    pairs['distance'] = [(int(i), int(j)) for i, j in variants._greedy(distance)]  # pylint: disable=protected-access
    matched, _ = variants._opdc(distance, iou)  # pylint: disable=protected-access
    pairs['opdc'] = [(int(i), int(j)) for i, j in zip(*np.nonzero(matched))]

  detected, false_alarms = {}, {}
  for rule, found in pairs.items():
    detected[rule] = np.zeros(m, bool)
    detected[rule][[i for i, _ in found]] = True
    kept = np.zeros(n + 1, bool)
    kept[[j + 1 for _, j in found]] = True
    false_alarms[rule] = on & ~kept[predicted]
  hit = ndimage.binary_dilation(on, _HIT_BOX) & truth
  detected['shooting'] = np.zeros(m, bool)
  detected['shooting'][np.unique(targets[hit]) - 1] = True
  false_alarms['shooting'] = on & ~ndimage.binary_dilation(truth, _NEAR_BOX)
  return Explanation(targets, predicted, t_centroids, p_centroids,
                     {r: detected[r] for r in RULES}, {r: false_alarms[r] for r in RULES},
                     pairs)
