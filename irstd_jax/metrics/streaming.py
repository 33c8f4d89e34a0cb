"""Streaming metrics: sufficient statistics accumulated batch by batch.

`stats = init()`, then `stats = update(stats, probs, masks, valid)` per
(B, H, W) batch (pure, usable inside `jax.jit`), `merge` across devices or
hosts, and `compute(stats)` at the end. Stats are sums only, so a tree-map add
also merges them (`counts` holds the exact int32 counters).
"""

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from irstd_jax.metrics import batch as batch_lib
from irstd_jax.metrics import counts

# DNANet's ROCMetric with 10 bins: thresholds 0, 0.1, ..., 1.
ROC_THRESHOLDS = tuple(i / 10 for i in range(11))
PD_FA_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
FA_VARIANTS = ('basicirstd', 'gglnet')
_EPS = float(np.spacing(1))  # The reference codes' denominator guard.
# DNANet's ROCMetric divides by (count + 0.001).
_ROC_EPS = 0.001


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=['images', 'valid_pixels', 'pred_pixels', 'mask_pixels',
                 'intersection', 'union', 'iou_sum', 'iou_error', 'roc_tp',
                 'roc_fp', 'targets', 'matched', 'fa_pixels', 'tile_overflow'],
    meta_fields=['roc_thresholds', 'pd_fa_thresholds'])
@dataclasses.dataclass(frozen=True)
class MetricStats:
  """Sufficient statistics: exact counters (see `counts`) and one float sum.

  `matched` and `fa_pixels` hold the Pd/Fa counts at the `update` threshold
  first, then one row per `pd_fa_thresholds`.
  """
  images: jnp.ndarray        # images with at least one valid pixel
  valid_pixels: jnp.ndarray
  pred_pixels: jnp.ndarray
  mask_pixels: jnp.ndarray
  intersection: jnp.ndarray
  union: jnp.ndarray
  iou_sum: jnp.ndarray       # float32 sum of per-image IoU (nIoU) ...
  iou_error: jnp.ndarray     # ... and its rounding error (compensated sum)
  roc_tp: jnp.ndarray
  roc_fp: jnp.ndarray
  targets: jnp.ndarray       # mask components
  matched: jnp.ndarray
  fa_pixels: jnp.ndarray     # predicted pixels outside matched components
  tile_overflow: jnp.ndarray  # > 0 only with too small custom capacities
  roc_thresholds: tuple
  pd_fa_thresholds: tuple


def init(thresholds: Optional[Sequence[float]] = None,
         pd_fa_thresholds: Optional[Sequence[float]] = None) -> MetricStats:
  """Empty statistics.

  Args:
    thresholds: ROC thresholds (default DNANet's 0, 0.1, ..., 1).
    pd_fa_thresholds: thresholds of the Pd-Fa curve (default 0.1, 0.3, ...,
      0.9); each costs one more connected-component pass per batch, so pass
      () in a training loop that only needs Pd/Fa at one threshold.
  """
  roc = _threshold_tuple(ROC_THRESHOLDS if thresholds is None else thresholds,
                         'thresholds')
  curve = _threshold_tuple(
      PD_FA_THRESHOLDS if pd_fa_thresholds is None else pd_fa_thresholds,
      'pd_fa_thresholds')
  rows = 1 + len(curve)
  return MetricStats(
      images=counts.zeros(), valid_pixels=counts.zeros(),
      pred_pixels=counts.zeros(), mask_pixels=counts.zeros(),
      intersection=counts.zeros(), union=counts.zeros(),
      iou_sum=jnp.zeros((), jnp.float32), iou_error=jnp.zeros((), jnp.float32),
      roc_tp=counts.zeros((len(roc),)), roc_fp=counts.zeros((len(roc),)),
      targets=counts.zeros(), matched=counts.zeros((rows,)),
      fa_pixels=counts.zeros((rows,)), tile_overflow=jnp.zeros((), jnp.int32),
      roc_thresholds=roc, pd_fa_thresholds=curve)


def _threshold_tuple(values, name) -> tuple:
  values = tuple(sorted(float(v) for v in values))
  if any(not 0.0 <= v <= 1.0 for v in values):
    raise ValueError(f'{name} must lie in [0, 1], got {values}.')
  if len(set(values)) != len(values):
    raise ValueError(f'{name} has duplicates: {values}.')
  return values


def update(stats: MetricStats, probs, masks, valid, threshold=0.5, *,
           pd_fa_relative: bool = False,
           capacities: Optional[tuple] = None) -> MetricStats:
  """Adds one batch. Pure and jittable.

  Args:
    stats: from `init` or a previous `update`.
    probs: (B, H, W) probabilities in [0, 1], no NaN (not checked here:
      the counts are then undefined; `score` rejects NaN).
    masks: (B, H, W) masks, {0, 1} or {0, 255}, any dtype.
    valid: (B, H, W) bool; False marks padding (and whole padded batch
      entries): such pixels count nowhere, never form or join components, and
      an image without valid pixels does not count for nIoU.
    threshold: prediction threshold (strict >), for IoU, P/R/F1 and Pd/Fa.
    pd_fa_relative: GaNet's variant: Pd/Fa threshold each probability map
      divided by its own maximum (IoU and ROC stay absolute).
    capacities: static tile capacities to try (advanced; default is fine).

  Returns:
    The updated statistics.
  """
  probs, masks, valid = jnp.asarray(probs), jnp.asarray(masks), jnp.asarray(
      valid)
  if probs.ndim != 3 or masks.shape != probs.shape or (
      valid.shape != probs.shape):
    raise ValueError(
        'update expects probs, masks and valid of one shape (B, H, W); got '
        f'{probs.shape}, {masks.shape} and {valid.shape}.')
  probs, masks, valid = batch_lib.pad_to_tiles(probs, masks, valid)
  out = batch_lib.batch_counts(probs, masks, valid, threshold,
                               stats.roc_thresholds, stats.pd_fa_thresholds,
                               pd_fa_relative, capacities)
  return _add(stats, out)


_COUNTERS = ('images', 'valid_pixels', 'pred_pixels', 'mask_pixels',
             'intersection', 'union', 'roc_tp', 'roc_fp', 'targets', 'matched',
             'fa_pixels')


def _add(stats: MetricStats, out: dict) -> MetricStats:
  # Kahan-Babuska two-sum keeps nIoU's float32 sum accurate over long sets.
  total = stats.iou_sum + out['iou_sum']
  b_virtual = total - stats.iou_sum
  error = (stats.iou_sum - (total - b_virtual)) + (out['iou_sum'] - b_virtual)
  return dataclasses.replace(
      stats, iou_sum=total, iou_error=stats.iou_error + error,
      tile_overflow=stats.tile_overflow + out.get('tile_overflow', 0),
      **{f: counts.add(getattr(stats, f), out[f]) for f in _COUNTERS})


def merge(a: MetricStats, b: MetricStats) -> MetricStats:
  """Sums two statistics (e.g. from two hosts)."""
  if (a.roc_thresholds, a.pd_fa_thresholds) != (b.roc_thresholds,
                                                 b.pd_fa_thresholds):
    raise ValueError('Cannot merge statistics with different thresholds: '
                     f'{a.roc_thresholds, a.pd_fa_thresholds} vs '
                     f'{b.roc_thresholds, b.pd_fa_thresholds}.')
  summed = jax.tree.map(jnp.add, a, b)
  return dataclasses.replace(
      summed, **{f: counts.normalize(getattr(summed, f)) for f in _COUNTERS})


def compute(stats: MetricStats, variant_stats=None) -> dict:
  """Final metrics (host floats); same keys as `score`.

  Args:
    stats: the streaming statistics.
    variant_stats: optional `variants.VariantStats` of the same images,
      threshold and Pd/Fa thresholds (only the latter can be checked here);
      adds its keys (`variants.KEYS`) and their curves.

  Returns:
    miou, niou, precision, recall, f1, pd, fa: floats; roc: dict(thresholds,
    tpr, fpr) of numpy arrays; auc; pd_fa_curve: dict(thresholds, pd, fa,
    and each variant key); and the raw counts targets, matched_targets,
    fa_pixels, pixels, images.
  """
  if int(stats.tile_overflow) > 0:
    raise ValueError('Some batches had more active tiles than the largest '
                     'capacity passed to update(capacities=...); their Pd/Fa '
                     'and counts are incomplete. Use the default capacities.')
  c = {f: counts.to_int(getattr(stats, f)) for f in _COUNTERS}
  tp = int(c['intersection'])
  fp = int(c['pred_pixels']) - tp
  fn = int(c['mask_pixels']) - tp
  precision = tp / (_EPS + tp + fp)
  recall = tp / (_EPS + tp + fn)
  images = int(c['images'])
  targets = int(c['targets'])
  pixels = int(c['valid_pixels'])
  pd = c['matched'] / targets if targets else np.full(
      c['matched'].shape, np.nan)
  fa = c['fa_pixels'] / pixels if pixels else np.full(
      c['fa_pixels'].shape, np.nan)
  positives = int(c['mask_pixels'])
  negatives = pixels - positives
  tpr = c['roc_tp'] / (positives + _ROC_EPS)
  fpr = c['roc_fp'] / (negatives + _ROC_EPS)
  result = dict(
      miou=tp / (_EPS + int(c['union'])),
      niou=(float(stats.iou_sum) + float(stats.iou_error)) / images
      if images else math.nan,
      precision=precision, recall=recall,
      f1=2 * precision * recall / (_EPS + precision + recall),
      pd=float(pd[0]), fa=float(fa[0]),
      roc=dict(thresholds=np.asarray(stats.roc_thresholds), tpr=tpr, fpr=fpr),
      auc=_auc(fpr, tpr),
      pd_fa_curve=dict(thresholds=np.asarray(stats.pd_fa_thresholds),
                       pd=pd[1:], fa=fa[1:]),
      targets=targets, matched_targets=int(c['matched'][0]),
      fa_pixels=int(c['fa_pixels'][0]), pixels=pixels, images=images)
  if variant_stats is not None:
    if variant_stats.pd_fa_thresholds != stats.pd_fa_thresholds:
      raise ValueError(
          'variant_stats has other Pd/Fa thresholds: '
          f'{variant_stats.pd_fa_thresholds} vs {stats.pd_fa_thresholds}.')
    # variants builds on this module; imported here to avoid the cycle.
    from irstd_jax.metrics import variants  # pylint: disable=g-import-not-at-top
    found = variants.compute(variant_stats)
    result['pd_fa_curve'].update(
        {k: v for k, v in found.pop('curve').items() if k != 'thresholds'})
    result.update(found)
  return result


def _auc(fpr, tpr) -> float:
  """Trapezoidal area under the (fpr, tpr) points, as sklearn.metrics.auc."""
  order = np.lexsort((tpr, fpr))
  x, y = fpr[order], tpr[order]
  return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
