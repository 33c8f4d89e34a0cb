"""Throughput of irstd_jax.metrics.score against the NumPy/scikit-image codes.

  python -m benchmarks.metrics_benchmark [--images 100] [--size 512] \
      [--pyirstdmetrics-python /tmp/pyirstd/bin/python]

Builds a seeded set of IRSTD-like maps (smooth low background, a few small
Gaussian targets, some false alarms) and times, on the same CPU:
  * jax: `metrics.score` (first call = compile + run, then warm runs), with
    `variants=False` (the field's usual metrics) and with the variants;
  * official: the reference codes' algorithms as they are written (BasicIRSTD
    mIoU with np.histogram and PD_FA with regionprops loops, GGL-Net's
    SamplewiseSigmoidMetric, GaNet's TP/FP/FN, DNANet's ROCMetric), without
    torch; with the variants, plus pyirstdmetrics 1.0.2 itself (the variants'
    official code; it needs numpy < 2, so it runs in the environment given by
    --pyirstdmetrics-python, in a subprocess that times itself, see
    benchmarks/pyirstdmetrics_side.py);
  * lean: the same algorithms written tightly (array sums, one inner loop of
    the Pd matching vectorized; the variants with one labelling per threshold
    shared by all rules), a stronger baseline.
Each is timed with and without the Pd-Fa curve (5 extra thresholds), in
interleaved rounds so that all see the same load; timings are the min and
median over runs, and the load average is printed because other processes
may share the CPU. All implementations are checked to agree.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
from scipy import ndimage
from scipy import optimize
from skimage import measure

EPS = np.spacing(1)
ROC = tuple(i / 10 for i in range(11))
CURVE = (0.1, 0.3, 0.5, 0.7, 0.9)


def make_set(count, size, seed=0):
  """Probability maps and {0, 1} masks with 1-4 targets each."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  preds, masks = [], []
  for _ in range(count):
    low = rng.uniform(0, 0.03, (size // 16, size // 16))
    pred = np.repeat(np.repeat(low, 16, 0), 16, 1)
    pred = (pred + rng.uniform(0, 0.005, (size, size))).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 5)):
      cy, cx = rng.integers(8, size - 8, 2)
      radius = rng.uniform(1, 4)
      mask[(yy - cy)**2 + (xx - cx)**2 <= radius**2] = 1
      dy, dx = rng.integers(-2, 3, 2)
      d2 = (yy - cy - dy)**2 + (xx - cx - dx)**2
      pred = np.maximum(pred, np.exp(-d2 / (2 * radius**2)) *
                        rng.uniform(0.4, 1.0)).astype(np.float32)
    for _ in range(rng.integers(0, 3)):
      cy, cx = rng.integers(8, size - 8, 2)
      d2 = (yy - cy)**2 + (xx - cx)**2
      pred = np.maximum(pred, np.exp(-d2 / (2 * rng.uniform(1, 3)**2)) *
                        rng.uniform(0.3, 0.8)).astype(np.float32)
    preds.append(pred)
    masks.append(mask)
  return preds, masks


# -- The reference codes' algorithms, as written there -----------------------


def _histogram_count(values):
  # BasicIRSTD / GGL-Net: np.histogram(x, bins=1, range=(1, 1)) counts ones.
  return np.histogram(values, bins=1, range=(1, 1))[0][0]


def _pd_fa_official(predicted, labels):
  """BasicIRSTD PD_FA.update: regionprops and a double loop."""
  image = measure.regionprops(measure.label(predicted, connectivity=2))
  label = measure.regionprops(measure.label(labels, connectivity=2))
  true_img = np.zeros(predicted.shape)
  matched = 0
  for i in range(len(label)):
    centroid_label = np.array(list(label[i].centroid))
    for m in range(len(image)):
      centroid_image = np.array(list(image[m].centroid))
      if np.linalg.norm(centroid_image - centroid_label) < 3:
        true_img[image[m].coords[:, 0], image[m].coords[:, 1]] = 1
        matched += 1
        del image[m]
        break
  return len(label), matched, (predicted - true_img).sum()


def _summary(tp, fp, fn, inter, union, ious, pd_fa, pixels, tpr, fpr):
  """The metrics dict both reference implementations return, from their sums."""
  precision, recall = tp / (EPS + tp + fp), tp / (EPS + tp + fn)
  return dict(miou=inter / (EPS + union), niou=np.mean(ious),
              precision=precision, recall=recall,
              f1=2 * precision * recall / (EPS + precision + recall),
              pd=pd_fa[0, 1] / pd_fa[0, 0], fa=pd_fa[0, 2] / pixels,
              tpr=tpr, fpr=fpr)


def official(preds, masks, curve=CURVE):
  inter = union = correct = labeled = tp = fp = fn = 0
  ious, pd_fa = [], np.zeros((1 + len(curve), 3))
  roc_tp, roc_fp, roc_pos, roc_neg = (np.zeros(len(ROC)) for _ in range(4))
  pixels = 0
  for pred, mask in zip(preds, masks):
    labels = mask.astype(np.int64)
    predict = (pred > 0.5).astype(np.int64)
    # BasicIRSTD mIoU (pixel accuracy and intersection / union).
    labeled += np.sum(labels > 0)
    correct += np.sum((predict == labels) * (labels > 0))
    intersection = predict * (predict == labels)
    i, p, t = (_histogram_count(intersection), _histogram_count(predict),
               _histogram_count(labels))
    inter, union = inter + i, union + p + t - i
    # GGL-Net SamplewiseSigmoidMetric (per image) and GaNet TP / FP / FN.
    ious.append(i / (EPS + p + t - i))
    tp, fp, fn = tp + i, fp + p - i, fn + t - i
    # DNANet ROCMetric.
    for k, threshold in enumerate(ROC):
      predicted = (pred > threshold).astype(np.float32)
      hits = predicted * (predicted == labels)
      tp_k = hits.sum()
      fp_k = (predicted * (predicted != labels)).sum()
      tn_k = ((1 - predicted) * (predicted == labels)).sum()
      fn_k = ((predicted != labels) * (1 - predicted)).sum()
      roc_tp[k] += tp_k
      roc_fp[k] += fp_k
      roc_pos[k] += tp_k + fn_k
      roc_neg[k] += fp_k + tn_k
    # BasicIRSTD PD_FA at the threshold and along the curve.
    for k, threshold in enumerate((0.5,) + tuple(curve)):
      pd_fa[k] += _pd_fa_official((pred > threshold).astype(np.int64), labels)
    pixels += pred.size
  return _summary(tp, fp, fn, inter, union, ious, pd_fa, pixels,
                  roc_tp / (roc_pos + 0.001), roc_fp / (roc_neg + 0.001))


def lean(preds, masks, curve=CURVE):
  inter = union = tp = fp = fn = pixels = 0
  ious, pd_fa = [], np.zeros((1 + len(curve), 3))
  roc_tp, roc_fp = np.zeros(len(ROC)), np.zeros(len(ROC))
  positives = negatives = 0
  for pred, mask in zip(preds, masks):
    mask = mask > 0
    predicted = pred > 0.5
    i, u = np.count_nonzero(predicted & mask), np.count_nonzero(predicted |
                                                                 mask)
    inter, union = inter + i, union + u
    ious.append(i / (EPS + u))
    tp += i
    fp += np.count_nonzero(predicted) - i
    fn += np.count_nonzero(mask) - i
    for k, threshold in enumerate(ROC):
      above = pred > threshold
      roc_tp[k] += np.count_nonzero(above & mask)
      roc_fp[k] += np.count_nonzero(above) - np.count_nonzero(above & mask)
    positives += np.count_nonzero(mask)
    negatives += mask.size - np.count_nonzero(mask)
    targets = measure.regionprops(measure.label(mask, connectivity=2))
    target_centroids = [np.array(t.centroid) for t in targets]
    for k, threshold in enumerate((0.5,) + tuple(curve)):
      fg = pred > threshold
      regions = measure.regionprops(measure.label(fg, connectivity=2))
      centroids = np.array([r.centroid for r in regions]).reshape(-1, 2)
      areas = np.array([r.area for r in regions])
      remaining = np.ones(len(regions), bool)
      matched = hit_pixels = 0
      for centroid in target_centroids:
        near = np.flatnonzero(remaining & (np.sqrt(
            np.sum((centroids - centroid)**2, 1)) < 3))
        if near.size:
          remaining[near[0]] = False
          matched += 1
          hit_pixels += areas[near[0]]
      pd_fa[k] += (len(targets), matched, np.count_nonzero(fg) - hit_pixels)
    pixels += pred.size
  return _summary(tp, fp, fn, inter, union, ious, pd_fa, pixels,
                  roc_tp / (positives + 0.001), roc_fp / (negatives + 0.001))


# -- The variants, written tightly ------------------------------------------


VARIANT_KEYS = ('pd_shooting', 'fa_shooting', 'pd_opdc', 'fa_opdc', 'hiou',
                'hiou_distance', 'seg_iou', 'seg_mrg_err', 'seg_itf_err',
                'seg_pcp_err', 'loc_iou', 'loc_s2m_err', 'loc_m2s_err',
                'loc_itf_err', 'loc_pcp_err')
# pyirstdmetrics' '<class>/<metric>' of each key.
LIBRARY_NAMES = dict(
    pd_shooting='pdfa_shooting/probability_detection',
    fa_shooting='pdfa_shooting/false_alarm',
    pd_opdc='match_opdc/probability_detection',
    fa_opdc='match_opdc/false_alarm', hiou='match_opdc/hiou',
    hiou_distance='match_distance/hiou',
    **{k: f'hiou_errors/{k}' for k in VARIANT_KEYS if k[:3] in ('seg', 'loc')})


def _ratio(a, b):
  return a / b if b else 0.0


def _variant_counts(on, image, c):
  """Adds one image's counts at one threshold to `c` (all rules)."""
  found = measure.label(on, connectivity=2)
  preds = measure.regionprops(found)
  targets = image['targets']
  m, n = len(targets), len(preds)
  # Shooting rule: each target's box grown by 1 px; false alarms outside the
  # mask grown by 4 px (computed once per image).
  for target in targets:
    r0, c0, r1, c1 = target.bbox
    box = on[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1]
    grown = image['grown'][target.label - 1]
    c['hits'] += bool(np.any(box & grown))
  c['shoot_fa'] += np.count_nonzero(on) - np.count_nonzero(on[image['near']])
  shape = (max(m, 1), max(n, 1))
  distance = np.full(shape, float(on.size))
  inter = np.zeros(shape)
  areas_t = image['areas']
  areas_p = np.array([p.area for p in preds])
  if m and n:
    cp = np.array([p.centroid for p in preds])
    diff = image['centroids'][:, None] - cp[None]
    distance[:m, :n] = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)
    # Co-occurrence of the two labellings on the target pixels only.
    hit = found.reshape(-1)[image['pixels']]
    keep = hit > 0
    np.add.at(inter, (image['pixel_labels'][keep] - 1, hit[keep] - 1), 1)
  union = np.ones(shape)
  union[:m, :n] = areas_t[:, None] + areas_p[None] - inter[:m, :n]
  iou = inter / union
  overlap, close = iou >= 0.5, distance < 3
  matched = np.zeros(shape, bool)
  if overlap.any():
    r, k = optimize.linear_sum_assignment(distance)
    keep = overlap[r, k]
    matched[r[keep], k[keep]] = True
  if close.any():
    fr, fk = np.flatnonzero(~matched.any(1)), np.flatnonzero(~matched.any(0))
    r, k = optimize.linear_sum_assignment(distance[np.ix_(fr, fk)])
    keep = close[fr[r], fk[k]]
    matched[fr[r][keep], fk[k][keep]] = True
  candidate = overlap | close
  rows, cols = matched.any(1), matched.any(0)
  c['tp'] += np.count_nonzero(matched)
  c['fp'] += shape[1] - np.count_nonzero(cols)
  c['fn'] += shape[0] - np.count_nonzero(rows)
  c['fa'] += int(areas_p[~cols[:n]].sum()) if n else 0
  c['itf'] += shape[1] - np.count_nonzero(candidate.any(0))
  c['pcp'] += shape[0] - np.count_nonzero(candidate.any(1))
  c['m2s'] += np.count_nonzero(candidate.any(0) & ~cols)
  c['s2m'] += np.count_nonzero(candidate.any(1) & ~rows)
  pred_in_mask = inter.sum(0)
  for i, j in zip(*np.nonzero(matched[:m, :n])):
    c['iou'] += iou[i, j]
    c['mrg'] += (pred_in_mask[j] - inter[i, j]) / union[i, j]
    c['seg_itf'] += (areas_p[j] - pred_in_mask[j]) / union[i, j]
    c['seg_pcp'] += (areas_t[i] - inter[i, j]) / union[i, j]
  free = np.ones(n, bool)
  for i in range(m if n else 0):
    near = np.flatnonzero(free & (distance[i, :n] < 3))
    if near.size:
      free[near[0]] = False
      c['d_tp'] += 1
      c['d_iou'] += iou[i, near[0]]
  c['d_fp'] += n
  c['d_fn'] += m


def _grown(target, shape):
  """The target grown by 1 px (3x3 boxes), cut to its bbox + 1 in `shape`."""
  r0, c0, r1, c1 = target.bbox
  top, left = max(r0 - 1, 0), max(c0 - 1, 0)
  box = np.zeros((min(r1 + 1, shape[0]) - top, min(c1 + 1, shape[1]) - left),
                 bool)
  box[r0 - top:r1 - top, c0 - left:c1 - left] = target.image
  return ndimage.binary_dilation(box, np.ones((3, 3), bool))


def lean_variants(preds, masks, curve=CURVE):
  """Every variant at 0.5 and along the curve: {key: (value, curve array)}."""
  thresholds = (0.5,) + tuple(curve)
  fields = ('hits', 'shoot_fa', 'tp', 'fp', 'fn', 'fa', 'itf', 'pcp', 'm2s',
            's2m', 'iou', 'mrg', 'seg_itf', 'seg_pcp', 'd_tp', 'd_fp', 'd_fn',
            'd_iou')
  counts = [dict.fromkeys(fields, 0) for _ in thresholds]
  targets_total = pixels = 0
  for pred, mask in zip(preds, masks):
    mask = mask > 0
    labels = measure.label(mask, connectivity=2)
    targets = measure.regionprops(labels)
    pixels_at = np.flatnonzero(mask)
    image = dict(
        targets=targets, areas=np.array([t.area for t in targets]),
        centroids=np.array([t.centroid for t in targets]).reshape(-1, 2),
        pixels=pixels_at, pixel_labels=labels.reshape(-1)[pixels_at],
        near=ndimage.binary_dilation(mask, np.ones((9, 9), bool)),
        grown=[_grown(t, mask.shape) for t in targets])
    for k, threshold in enumerate(thresholds):
      _variant_counts(pred > np.float32(threshold), image, counts[k])
    targets_total += len(targets)
    pixels += mask.size
  rows = []
  for c in counts:
    c['d_fp'] -= c['d_tp']
    c['d_fn'] -= c['d_tp']
    objects = c['tp'] + c['fp'] + c['fn']
    seg, loc = _ratio(c['iou'], c['tp']), _ratio(c['tp'], objects)
    rows.append(dict(
        pd_shooting=_ratio(c['hits'], targets_total),
        fa_shooting=c['shoot_fa'] / pixels,
        pd_opdc=_ratio(c['tp'], c['tp'] + c['fn']), fa_opdc=c['fa'] / pixels,
        hiou=seg * loc,
        hiou_distance=_ratio(c['d_iou'], c['d_tp']) * _ratio(
            c['d_tp'], c['d_tp'] + c['d_fp'] + c['d_fn']),
        seg_iou=seg, seg_mrg_err=_ratio(c['mrg'], c['tp']),
        seg_itf_err=_ratio(c['seg_itf'], c['tp']),
        seg_pcp_err=_ratio(c['seg_pcp'], c['tp']), loc_iou=loc,
        loc_s2m_err=_ratio(c['s2m'], objects),
        loc_m2s_err=_ratio(c['m2s'], objects),
        loc_itf_err=_ratio(c['itf'], objects),
        loc_pcp_err=_ratio(c['pcp'], objects)))
  return {k: (rows[0][k], np.array([r[k] for r in rows[1:]]))
          for k in VARIANT_KEYS}


class PyIRSTDMetrics:
  """pyirstdmetrics in its own environment and process (numpy < 2)."""

  def __init__(self, python, preds, masks):
    self._python = python
    self._dir = tempfile.TemporaryDirectory()
    self._path = os.path.join(self._dir.name, 'set.npz')
    np.savez(self._path, **{f'pred/{i:04d}': p for i, p in enumerate(preds)},
             **{f'mask/{i:04d}': m for i, m in enumerate(masks)})
    self.seconds = None

  def __call__(self, curve):
    """Runs once; returns {key: (value, curve)}, its own time in .seconds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [self._python, '-m', 'benchmarks.pyirstdmetrics_side', self._path,
         '--thresholds', *map(str, (0.5,) + tuple(curve))],
        cwd=root, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    self.seconds = out['seconds'][0]
    results = out['results']
    values = {k: (results[v][0], np.array(results[v][1:]))
              for k, v in LIBRARY_NAMES.items()}
    values['pd'] = results['pdfa_distance/probability_detection'][0]
    values['fa'] = results['pdfa_distance/false_alarm'][0]
    return values


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def _check_variants(result, expected, what):
  for key in VARIANT_KEYS:
    value, curve = expected[key]
    assert abs(result[key] - value) <= 1e-9, (what, key, result[key], value)
    assert np.allclose(result['pd_fa_curve'][key], curve, rtol=0,
                       atol=1e-9), (what, key)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=100)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--rounds', type=int, default=3,
                      help='interleaved rounds of all implementations')
  parser.add_argument('--jax-repeats', type=int, default=3,
                      help='jax runs per round')
  parser.add_argument('--pyirstdmetrics-python', default=None,
                      help='a Python with numpy<2 and pyirstdmetrics==1.0.2; '
                      'without it, the variants are compared with the lean '
                      'and official-style NumPy codes only')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  from irstd_jax import metrics  # pylint: disable=g-import-not-at-top

  preds, masks = make_set(args.images, args.size)
  count = len(preds)
  library = (PyIRSTDMetrics(args.pyirstdmetrics_python, preds, masks)
             if args.pyirstdmetrics_python else None)
  print(f'{count} images of {args.size}x{args.size}, '
        f'{sum(len(measure.regionprops(measure.label(m))) for m in masks)} '
        f'targets; jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()}')
  rows = []
  for curve in (CURVE, ()):
    name = 'with Pd-Fa curve' if curve else 'without curve'
    runs = dict(
        jax=lambda c=curve: metrics.score(preds, masks, pd_fa_thresholds=c,
                                          variants=False),
        jax_variants=lambda c=curve: metrics.score(preds, masks,
                                                   pd_fa_thresholds=c),
        lean=lambda c=curve: lean(preds, masks, c),
        lean_variants=lambda c=curve: lean_variants(preds, masks, c),
        official=lambda c=curve: official(preds, masks, c))
    if library:
      runs['pyirstdmetrics'] = lambda c=curve: library(c)
    first = {}
    for key in ('jax', 'jax_variants'):
      result, first[key] = _timed(runs[key])
    times = {key: [] for key in runs}
    outputs = {}
    # Interleaved rounds, so that every implementation sees the same load.
    for _ in range(args.rounds):
      for key, run in runs.items():
        for _ in range(args.jax_repeats if key.startswith('jax') else 1):
          outputs[key], seconds = _timed(run)
          times[key].append(library.seconds if key == 'pyirstdmetrics' else
                            seconds)
    expected, same = outputs['lean'], outputs['official']
    for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'pd', 'fa'):
      for got in (result, outputs['jax_variants']):
        assert abs(got[key] - expected[key]) <= 1e-6 * abs(expected[key]), (
            key, got[key], expected[key])
      assert abs(same[key] - expected[key]) <= 1e-9 * abs(expected[key]), key
    assert np.allclose(result['roc']['tpr'], expected['tpr'], atol=1e-6)
    assert np.allclose(result['roc']['fpr'], expected['fpr'], atol=1e-6)
    _check_variants(outputs['jax_variants'], outputs['lean_variants'], 'lean')
    if library:
      _check_variants(outputs['jax_variants'], outputs['pyirstdmetrics'],
                      'pyirstdmetrics')
      assert outputs['pyirstdmetrics']['pd'] == result['pd']
      assert abs(outputs['pyirstdmetrics']['fa'] - result['fa']) < 1e-12
    variants = outputs['jax_variants']
    print(f'\n{name}: Pd {result["pd"]:.4f}, Fa {result["fa"] * 1e6:.2f}e-6, '
          f'mIoU {result["miou"]:.4f}; hIoU {variants["hiou"]:.4f}, Pd '
          f'(shooting) {variants["pd_shooting"]:.4f}, Pd (OPDC) '
          f'{variants["pd_opdc"]:.4f} (all implementations agree)')
    print(f'  jax first call (compile + run): {first["jax"]:.2f} s, with the '
          f'variants {first["jax_variants"]:.2f} s')
    labels = (('jax', 'jax warm'), ('jax_variants', 'jax warm, + variants'),
              ('lean', 'lean NumPy/skimage'),
              ('lean_variants', 'lean variants (NumPy/scipy)'),
              ('official', 'official-style NumPy/skimage'),
              ('pyirstdmetrics', 'pyirstdmetrics 1.0.2'))
    for key, label in labels:
      if key not in times:
        continue
      best = min(times[key]) * 1e3 / count
      typical = statistics.median(times[key]) * 1e3 / count
      print(f'  {label:30s} min {best:7.2f} ms/image, median {typical:7.2f} '
            f'ms/image ({len(times[key])} runs)')
    rows.append((name, times))
  print('\nspeed-up of jax, compile excluded (min / min, and median / median):')

  def ratio(times, ours, others):
    best = sum(min(times[o]) for o in others) / min(times[ours])
    typical = sum(statistics.median(times[o]) for o in others) / (
        statistics.median(times[ours]))
    return f'{best:5.1f}x / {typical:5.1f}x'

  for name, times in rows:
    print(f'  {name}:')
    print(f'    usual metrics:   {ratio(times, "jax", ["lean"])} vs lean, '
          f'{ratio(times, "jax", ["official"])} vs official-style')
    line = (f'    all + variants:  '
            f'{ratio(times, "jax_variants", ["lean", "lean_variants"])} vs '
            f'lean (+ lean variants)')
    if 'pyirstdmetrics' in times:
      line += (f', {ratio(times, "jax_variants", ["official", "pyirstdmetrics"])}'
               ' vs official-style + pyirstdmetrics')
    print(line)
    if 'pyirstdmetrics' in times:
      print(f'    pyirstdmetrics alone vs jax with everything: '
            f'{ratio(times, "jax_variants", ["pyirstdmetrics"])}')
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
