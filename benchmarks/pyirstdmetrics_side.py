"""Times pyirstdmetrics 1.0.2 on a saved set; run by metrics_benchmark.py.

pyirstdmetrics needs numpy < 2, so it runs in its own environment (see
docs/metrics_variants.md) and in its own process:

  PYTHON -m benchmarks.pyirstdmetrics_side SET.npz --thresholds 0.5 0.1 ...

SET.npz holds `pred/NNNN` (float32) and `mask/NNNN`. Each run feeds every
image to the library's five classes (distance and shooting-rule Pd/Fa, OPDC
and distance matching, the hIoU error analysis), with their thresholds set to
ours (the first is the operating threshold, the rest the curve); loading is
not timed. Prints JSON: {"seconds": [per run], "results": {name: [per
threshold]}} with names '<class>/<metric>'. Imports neither jax nor irstd_jax.
"""

import argparse
import json
import time

import numpy as np
import py_irstd_metrics as lib


def _classes(thresholds):
  """The library's classes, their thresholds replaced by ours."""
  n = len(thresholds)
  classes = dict(
      pdfa_distance=lib.ProbabilityDetectionAndFalseAlarmRate(n),
      pdfa_shooting=lib.ShootingRuleBasedProbabilityDetectionAndFalseAlarmRate(
          n),
      match_opdc=lib.MatchingBasedMetrics(n),
      match_distance=lib.MatchingBasedMetrics(
          n, matching_method=lib.DistanceOnlyMatching()),
      hiou_errors=lib.HierarchicalIoUBasedErrorAnalysis(n))
  for metric in classes.values():
    metric.thresholds = np.asarray(thresholds, np.float64)
  return classes


def run(preds, masks, thresholds):
  classes = _classes(thresholds)
  for pred, mask in zip(preds, masks):
    for metric in classes.values():
      metric.update(pred, mask)
  return {f'{name}/{key}': np.asarray(value, np.float64).reshape(-1).tolist()
          for name, metric in classes.items()
          for key, value in metric.get().items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('path')
  parser.add_argument('--thresholds', type=float, nargs='+', required=True)
  parser.add_argument('--runs', type=int, default=1)
  args = parser.parse_args()
  with np.load(args.path) as data:
    count = sum(1 for k in data.files if k.startswith('pred/'))
    preds = [data[f'pred/{i:04d}'] for i in range(count)]
    masks = [data[f'mask/{i:04d}'] > 0 for i in range(count)]
  seconds = []
  for _ in range(args.runs):
    start = time.perf_counter()
    results = run(preds, masks, args.thresholds)
    seconds.append(time.perf_counter() - start)
  print(json.dumps({'seconds': seconds, 'results': results}))


if __name__ == '__main__':
  main()
