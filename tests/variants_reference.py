"""A plain NumPy / scikit-image / scipy reference of the metric variants.

Written from pixel masks (dilations for the shooting rule, dense IoU tables for
the matchings), not from irstd_jax's region records; tests check it against
pyirstdmetrics' outputs (tests/fixtures/pyirstdmetrics_cases.npz) and then use
it where the library cannot run (padding, sharding, the relative variant).
"""

import numpy as np
from scipy import ndimage
from scipy import optimize
from skimage import measure

from irstd_jax import metrics

KEYS = metrics.variants.KEYS


def _ratio(a, b):
  return a / b if b else 0.0


def _centroids(props):
  return np.array([p.centroid for p in props], np.float64).reshape(-1, 2)


def _image_counts(pred_on, mask):
  """Every variant's counts on one image at one threshold."""
  c = {}
  labels = measure.label(mask, connectivity=2)
  targets = measure.regionprops(labels)
  found = measure.label(pred_on, connectivity=2)
  preds = measure.regionprops(found)
  m, n = len(targets), len(preds)
  # Shooting rule: dilations by the boxes' radii.
  hit_zone = ndimage.binary_dilation(pred_on, np.ones((3, 3), bool))
  c['shooting_hits'] = np.unique(labels[hit_zone & mask]).size
  near = ndimage.binary_dilation(mask, np.ones((9, 9), bool))
  c['shooting_fa'] = int(np.sum(pred_on & ~near))
  # Tables as the library sizes them: max(M, 1) x max(N, 1).
  shape = (max(m, 1), max(n, 1))
  distance = np.full(shape, float(mask.size))
  inter = np.zeros(shape)
  union = np.ones(shape)
  if m and n:
    diff = _centroids(targets)[:, None] - _centroids(preds)[None]
    distance[:m, :n] = np.sqrt(np.sum(diff * diff, axis=2))
    both = (labels > 0) & (found > 0)  # co-occurrence of the two labellings
    np.add.at(inter, (labels[both] - 1, found[both] - 1), 1)
    areas = np.array([t.area for t in targets])[:, None] + np.array(
        [p.area for p in preds])[None]
    union = areas - inter
  iou = inter / union
  close, overlap = distance < 3, iou >= 0.5
  matched = np.zeros(shape, bool)
  if overlap.any():
    rows, cols = optimize.linear_sum_assignment(distance)
    matched[rows[overlap[rows, cols]], cols[overlap[rows, cols]]] = True
  if close.any():
    free_r = np.flatnonzero(~matched.any(1))
    free_c = np.flatnonzero(~matched.any(0))
    rows, cols = optimize.linear_sum_assignment(distance[np.ix_(free_r,
                                                                free_c)])
    for r, k in zip(free_r[rows], free_c[cols]):
      matched[r, k] |= close[r, k]
  candidate = overlap | close
  c['opdc_tp'] = int(matched.sum())
  c['opdc_fp'] = int(np.sum(~matched.any(0)))
  c['opdc_fn'] = int(np.sum(~matched.any(1)))
  c['opdc_fa'] = sum(p.area for j, p in enumerate(preds)
                     if not matched[:, j].any())
  c['loc_itf'] = int(np.sum(~candidate.any(0)))
  c['loc_pcp'] = int(np.sum(~candidate.any(1)))
  c['loc_m2s'] = c['opdc_fp'] - c['loc_itf']
  c['loc_s2m'] = c['opdc_fn'] - c['loc_pcp']
  c['opdc_iou'] = c['seg_mrg'] = c['seg_itf'] = c['seg_pcp'] = 0.0
  for i, j in zip(*np.nonzero(matched)):
    t, p = targets[i].bbox, preds[j].bbox  # the pair's pixels lie in both
    box = (slice(min(t[0], p[0]), max(t[2], p[2])),
           slice(min(t[1], p[1]), max(t[3], p[3])))
    a, b = labels[box] == targets[i].label, found[box] == preds[j].label
    both = np.sum(a | b)
    c['opdc_iou'] += np.sum(a & b) / both
    c['seg_mrg'] += np.sum(b & mask[box] & ~a) / both
    c['seg_itf'] += np.sum(b & ~mask[box]) / both
    c['seg_pcp'] += np.sum(a & ~b) / both
  # Distance-only one-to-one matching (BasicIRSTD's greedy order).
  free = np.ones(n, bool)
  c['distance_tp'], c['distance_iou'], c['distance_fa'] = 0, 0.0, int(
      pred_on.sum())
  for i in range(m if n else 0):
    near = np.flatnonzero(free & (distance[i, :n] < 3))
    if near.size:
      j = near[0]
      free[j] = False
      c['distance_tp'] += 1
      c['distance_iou'] += iou[i, j]
      c['distance_fa'] -= preds[j].area
  c['distance_fp'], c['distance_fn'] = n - c['distance_tp'], m - c[
      'distance_tp']
  c['targets'] = m
  return c


def reference(preds, masks, thresholds=(0.5,), relative=False):
  """{key: array over thresholds} for the variant keys (and 'pd', 'fa')."""
  rows = []
  pixels = 0
  for t in thresholds:
    total = {}
    for pred, mask in zip(preds, masks):
      pred = np.asarray(pred, np.float32)
      if relative:
        pred = pred / pred.max() if pred.max() > 0 else pred * np.nan
      with np.errstate(invalid='ignore'):
        on = pred > np.float32(t)
      for k, v in _image_counts(on, np.asarray(mask) > 0).items():
        total[k] = total.get(k, 0) + v
    rows.append(total)
  pixels = sum(np.asarray(p).size for p in preds)
  out = {k: [] for k in KEYS + ('pd', 'fa')}
  for c in rows:
    objects = c['opdc_tp'] + c['opdc_fp'] + c['opdc_fn']
    seg, loc = _ratio(c['opdc_iou'], c['opdc_tp']), _ratio(c['opdc_tp'],
                                                            objects)
    values = dict(
        pd=_ratio(c['distance_tp'], c['targets']),
        fa=c['distance_fa'] / pixels,
        pd_shooting=_ratio(c['shooting_hits'], c['targets']),
        fa_shooting=c['shooting_fa'] / pixels,
        pd_opdc=_ratio(c['opdc_tp'], c['opdc_tp'] + c['opdc_fn']),
        fa_opdc=c['opdc_fa'] / pixels, hiou=seg * loc,
        hiou_distance=_ratio(c['distance_iou'], c['distance_tp']) * _ratio(
            c['distance_tp'], c['distance_tp'] + c['distance_fp'] +
            c['distance_fn']),
        seg_iou=seg, seg_mrg_err=_ratio(c['seg_mrg'], c['opdc_tp']),
        seg_itf_err=_ratio(c['seg_itf'], c['opdc_tp']),
        seg_pcp_err=_ratio(c['seg_pcp'], c['opdc_tp']), loc_iou=loc,
        loc_s2m_err=_ratio(c['loc_s2m'], objects),
        loc_m2s_err=_ratio(c['loc_m2s'], objects),
        loc_itf_err=_ratio(c['loc_itf'], objects),
        loc_pcp_err=_ratio(c['loc_pcp'], objects))
    for k, v in values.items():
      out[k].append(v)
  return {k: np.asarray(v) for k, v in out.items()}


def assert_close(ours, expected, what, atol=1e-12):
  """Both {key: (value at the threshold, curve)}; worst difference per key.

  Our `pd` is NaN without targets where pyirstdmetrics reports 0.
  """
  worst = {}
  for key, (value, curve) in expected.items():
    got, got_curve = ours[key]
    if key == 'pd' and not np.isfinite(got):
      got, got_curve = 0.0, np.nan_to_num(got_curve)
    worst[key] = max(abs(got - value), np.max(np.abs(got_curve - curve),
                                              initial=0.0))
  bad = {k: v for k, v in worst.items() if v > atol}
  assert not bad, f'{what}: {bad}'
  return worst


def of_score(result, keys=KEYS + ('pd', 'fa')):
  """{key: (value at the threshold, curve)} of a `score` / `compute` dict."""
  curve = result['pd_fa_curve']
  return {k: (result[k], curve[k]) for k in keys}


def of_reference(expected, keys=KEYS):
  """The same of `reference(..., (threshold,) + curve)`."""
  return {k: (float(expected[k][0]), expected[k][1:]) for k in keys}
