"""Throughput of irstd_jax.metrics.score against the NumPy/scikit-image codes.

  python -m benchmarks.metrics_benchmark [--images 100] [--size 512]

Builds a seeded set of IRSTD-like maps (smooth low background, a few small
Gaussian targets, some false alarms) and times, on the same CPU:
  * jax: `metrics.score` (first call = compile + run, then warm runs);
  * official: the reference codes' algorithms as they are written (BasicIRSTD
    mIoU with np.histogram and PD_FA with regionprops loops, GGL-Net's
    SamplewiseSigmoidMetric, GaNet's TP/FP/FN, DNANet's ROCMetric), without
    torch;
  * lean: the same algorithms written tightly (array sums, one inner loop of
    the Pd matching vectorized), a stronger baseline.
Each is timed with and without the Pd-Fa curve (5 extra thresholds), in
interleaved rounds so that all see the same load; timings are the min and
median over runs, and the load average is printed because other processes
may share the CPU.
"""

import argparse
import os
import statistics
import time

import numpy as np
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


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=100)
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--rounds', type=int, default=3,
                      help='interleaved rounds of all implementations')
  parser.add_argument('--jax-repeats', type=int, default=3,
                      help='jax runs per round')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  from irstd_jax import metrics  # pylint: disable=g-import-not-at-top

  preds, masks = make_set(args.images, args.size)
  count = len(preds)
  print(f'{count} images of {args.size}x{args.size}, '
        f'{sum(len(measure.regionprops(measure.label(m))) for m in masks)} '
        f'targets; jax {jax.__version__} on {jax.devices()[0].platform}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()}')
  rows = []
  for curve in (CURVE, ()):
    name = 'with Pd-Fa curve' if curve else 'without curve'
    runs = dict(
        jax=lambda c=curve: metrics.score(preds, masks, pd_fa_thresholds=c),
        lean=lambda c=curve: lean(preds, masks, c),
        official=lambda c=curve: official(preds, masks, c))
    result, first = _timed(runs['jax'])
    times = {key: [] for key in runs}
    # Interleaved rounds, so that every implementation sees the same load.
    for _ in range(args.rounds):
      for key, run in runs.items():
        for _ in range(args.jax_repeats if key == 'jax' else 1):
          out, seconds = _timed(run)
          times[key].append(seconds)
          if key == 'lean':
            expected = out
          elif key == 'official':
            same = out
    for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'pd', 'fa'):
      assert abs(result[key] - expected[key]) <= 1e-6 * abs(expected[key]), (
          key, result[key], expected[key])
      assert abs(same[key] - expected[key]) <= 1e-9 * abs(expected[key]), key
    assert np.allclose(result['roc']['tpr'], expected['tpr'], atol=1e-6)
    assert np.allclose(result['roc']['fpr'], expected['fpr'], atol=1e-6)
    print(f'\n{name}: Pd {result["pd"]:.4f}, Fa {result["fa"] * 1e6:.2f}e-6, '
          f'mIoU {result["miou"]:.4f} (all three implementations agree)')
    print(f'  jax first call (compile + run): {first:.2f} s')
    for key, label in (('jax', 'jax warm'), ('lean', 'lean NumPy/skimage'),
                       ('official', 'official-style NumPy/skimage')):
      best = min(times[key]) * 1e3 / count
      typical = statistics.median(times[key]) * 1e3 / count
      print(f'  {label:30s} min {best:7.2f} ms/image, median {typical:7.2f} '
            f'ms/image ({len(times[key])} runs)')
    rows.append((name, times))
  print('\nspeed-up of jax, compile excluded (min / min, and median / median):')
  for name, times in rows:
    ratios = []
    for other in ('lean', 'official'):
      best = min(times[other]) / min(times['jax'])
      typical = statistics.median(times[other]) / statistics.median(
          times['jax'])
      ratios.append(f'{best:5.1f}x / {typical:5.1f}x vs {other}')
    print(f'  {name:18s} ' + ', '.join(ratios))
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
