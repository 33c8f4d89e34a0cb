"""Target-level metric variants: shooting rule, OPDC and distance matching, hIoU.

The field reports Pd / Fa under several rules without saying which, and the
hIoU paper (NeurIPS 2025, its library `pyirstdmetrics` 1.0.2) adds one-to-one
matchings and an error breakdown. These are their definitions, equal to
`pyirstdmetrics` (see docs/metrics_variants.md):

* shooting rule (`pd_shooting`, `fa_shooting`): a target is hit when a
  predicted pixel lies in the 3x3 box around one of its pixels; predicted
  pixels outside the 9x9 boxes around all target pixels are false alarms.
* OPDC matching (`pd_opdc`, `fa_opdc`, `hiou` and the error terms): per image,
  an optimal assignment on centroid distances kept where IoU >= 0.5, then an
  assignment among the still unmatched kept where distance < 3.
* distance-only one-to-one matching (`hiou_distance`): BasicIRSTD's greedy
  matching (its Pd / Fa are `pd` / `fa`), scored with the matched pairs' IoU.

Where it runs: connected components, their areas and exact centroids, the
pixels each (target, prediction) pair shares and the whole shooting rule are
computed batched on the device (`regions`); the assignments run on the host
with scipy's `linear_sum_assignment` (as the library), over each image's few
components. So the statistics here are host-side: `init`, then `update(stats,
probs, masks, valid)` per batch (not jittable: it calls jitted stages and
reads their small outputs), `merge` across hosts, `compute` at the end.
`irstd_jax.metrics.score` and `Evaluator.run` feed the same accumulator.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from irstd_jax.metrics import batch as batch_lib
from irstd_jax.metrics import regions as regions_lib
from irstd_jax.metrics import streaming

# pyirstdmetrics' OPDC defaults.
OVERLAP_THRESHOLD = 0.5
DISTANCE_THRESHOLD = 3
_SPLIT = 128

# Per-row counters (one row per threshold: `threshold`, then the curve).
_INT_FIELDS = ('shooting_hits', 'shooting_fa', 'opdc_tp', 'opdc_fp', 'opdc_fn',
               'opdc_fa', 'loc_itf', 'loc_pcp', 'loc_m2s', 'loc_s2m',
               'distance_tp', 'distance_fp', 'distance_fn', 'distance_fa')
_FLOAT_FIELDS = ('opdc_iou', 'seg_mrg', 'seg_itf', 'seg_pcp', 'distance_iou')
_SCALAR_FIELDS = ('images', 'pixels', 'targets')

# What `compute` returns at `threshold` (and per curve threshold).
KEYS = ('pd_shooting', 'fa_shooting', 'pd_opdc', 'fa_opdc', 'hiou',
        'hiou_distance', 'seg_iou', 'seg_mrg_err', 'seg_itf_err',
        'seg_pcp_err', 'loc_iou', 'loc_s2m_err', 'loc_m2s_err', 'loc_itf_err',
        'loc_pcp_err')


@dataclasses.dataclass(frozen=True)
class VariantStats:
  """Sums over the images seen: exact int64 counts and float64 sums.

  `counts[name]` has one entry per row: `threshold` first, then each of
  `pd_fa_thresholds` (as `MetricStats.matched`). The OPDC counts keep
  pyirstdmetrics' convention for images without targets or predictions (see
  `_phantoms`).
  """
  counts: dict
  threshold: float
  pd_fa_thresholds: tuple
  relative: bool


def init(threshold: float = 0.5,
         pd_fa_thresholds: Optional[Sequence[float]] = None,
         pd_fa_relative: bool = False) -> VariantStats:
  """Empty statistics.

  Args:
    threshold: the prediction threshold (strict >).
    pd_fa_thresholds: the curve's thresholds (default as `metrics.init`).
    pd_fa_relative: threshold prob / image max (GaNet's Pd/Fa) here too.
  """
  curve = streaming._threshold_tuple(  # pylint: disable=protected-access
      streaming.PD_FA_THRESHOLDS if pd_fa_thresholds is None else
      pd_fa_thresholds, 'pd_fa_thresholds')
  rows = 1 + len(curve)
  counts = {f: np.zeros((), np.int64) for f in _SCALAR_FIELDS}
  counts.update({f: np.zeros((rows,), np.int64) for f in _INT_FIELDS})
  counts.update({f: np.zeros((rows,), np.float64) for f in _FLOAT_FIELDS})
  return VariantStats(counts, float(threshold), curve, bool(pd_fa_relative))


def merge(a: VariantStats, b: VariantStats) -> VariantStats:
  """Sums two statistics (e.g. from two hosts that saw different images)."""
  if (a.threshold, a.pd_fa_thresholds, a.relative) != (
      b.threshold, b.pd_fa_thresholds, b.relative):
    raise ValueError('Cannot merge variant statistics of different '
                     f'thresholds: {a.threshold, a.pd_fa_thresholds, a.relative}'
                     f' vs {b.threshold, b.pd_fa_thresholds, b.relative}.')
  return dataclasses.replace(
      a, counts={k: a.counts[k] + b.counts[k] for k in a.counts})


def _ratio(numerator, denominator):
  """numerator / denominator, 0 where the denominator is 0 (pyirstdmetrics)."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                   where=denominator != 0)


def compute_rows(stats: VariantStats) -> dict:
  """Every variant metric per row (threshold first, then the curve)."""
  c = stats.counts
  objects = c['opdc_tp'] + c['opdc_fp'] + c['opdc_fn']
  seg_iou = _ratio(c['opdc_iou'], c['opdc_tp'])
  loc_iou = _ratio(c['opdc_tp'], objects)
  distance_objects = c['distance_tp'] + c['distance_fp'] + c['distance_fn']
  return dict(
      pd_shooting=_ratio(c['shooting_hits'], np.broadcast_to(
          c['targets'], c['shooting_hits'].shape)),
      fa_shooting=_ratio(c['shooting_fa'], np.broadcast_to(
          c['pixels'], c['shooting_fa'].shape)),
      pd_opdc=_ratio(c['opdc_tp'], c['opdc_tp'] + c['opdc_fn']),
      fa_opdc=_ratio(c['opdc_fa'], np.broadcast_to(c['pixels'],
                                                  c['opdc_fa'].shape)),
      hiou=seg_iou * loc_iou,
      hiou_distance=_ratio(c['distance_iou'], c['distance_tp']) *
      _ratio(c['distance_tp'], distance_objects),
      seg_iou=seg_iou,
      seg_mrg_err=_ratio(c['seg_mrg'], c['opdc_tp']),
      seg_itf_err=_ratio(c['seg_itf'], c['opdc_tp']),
      seg_pcp_err=_ratio(c['seg_pcp'], c['opdc_tp']),
      loc_iou=loc_iou,
      loc_s2m_err=_ratio(c['loc_s2m'], objects),
      loc_m2s_err=_ratio(c['loc_m2s'], objects),
      loc_itf_err=_ratio(c['loc_itf'], objects),
      loc_pcp_err=_ratio(c['loc_pcp'], objects))


def compute(stats: VariantStats) -> dict:
  """The variant metrics at `threshold` (floats) and over the curve.

  Returns:
    Each of `KEYS` as a float, and `curve`: dict(thresholds, and each of
    `KEYS` as an array over `pd_fa_thresholds`).
  """
  rows = compute_rows(stats)
  result = {k: float(v[0]) for k, v in rows.items()}
  result['curve'] = dict(thresholds=np.asarray(stats.pd_fa_thresholds),
                         **{k: v[1:] for k, v in rows.items()})
  return result


def layer_of_rows(stats: VariantStats):
  """The thresholds to label (float32) and the layer of each row.

  As `batch.pd_fa_thresholds`: a threshold already on the curve is labelled
  once (computed here on the host, without a device round trip).
  """
  curve = stats.pd_fa_thresholds
  if stats.threshold in curve:
    return (np.asarray(curve, np.float32),
            np.asarray([curve.index(stats.threshold)] + list(range(len(curve)))))
  return (np.asarray((stats.threshold,) + curve, np.float32),
          np.arange(1 + len(curve)))


# -- the device stages of `update` -------------------------------------------


@functools.partial(jax.jit, static_argnames=('relative',))
def _summarize(probs, masks, valid, thresholds, relative):
  batch_lib.check_batch(probs.shape)
  probs, masks, valid = batch_lib.pad_to_tiles(probs, masks, valid)
  probs, mask_fg, valid = batch_lib.prepare(probs, masks, valid)
  tile_image = batch_lib.per_entry_tile_image(probs.shape)
  grid = batch_lib.grid_from_pixels(probs, mask_fg, valid, relative)
  # IoU / ROC thresholds equal to the Pd/Fa ones: no tile more is active.
  summary = batch_lib.summarize(grid, tile_image, probs.shape[0],
                                jnp.min(thresholds), thresholds, thresholds,
                                relative)
  rows, cols = jnp.any(valid, axis=2), jnp.any(valid, axis=1)
  geometry = jnp.stack([jnp.sum(valid, axis=(1, 2), dtype=jnp.int32),
                        jnp.argmax(rows, axis=1).astype(jnp.int32),
                        jnp.argmax(cols, axis=1).astype(jnp.int32)], axis=1)
  return (probs, mask_fg, valid, tile_image), summary, geometry


@functools.partial(jax.jit, static_argnames=('capacity', 'relative'))
def _gather(arrays, active, image_max, thresholds, capacity, relative):
  probs, mask_fg, valid, tile_image = arrays
  lanes = batch_lib.gather(probs, mask_fg, tile_image, active, capacity,
                           image_max, valid=valid)
  score = lanes.probs / lanes.scale[:, None, None] if relative else lanes.probs
  foreground = jnp.stack([
      jnp.sum(lanes.mask.astype(jnp.int32)),
      jnp.sum((lanes.valid & (score > jnp.min(thresholds))).astype(
          jnp.int32))])
  return lanes, foreground


def label_and_regions(lanes, thresholds, relative, capacity, overlap_capacity):
  layers = batch_lib.label_layers(lanes, thresholds, relative, capacity)
  return regions_lib.regions(lanes, layers, thresholds, relative,
                             overlap_capacity)


_label_and_regions = jax.jit(
    label_and_regions,
    static_argnames=('relative', 'capacity', 'overlap_capacity'))


@functools.partial(jax.jit,
                   static_argnames=('targets', 'predicted', 'overlaps'))
def _take(found: regions_lib.Regions, targets, predicted, overlaps):
  return found._replace(
      targets=jax.tree.map(lambda a: a[:targets], found.targets),
      predicted=jax.tree.map(lambda a: a[:, :predicted], found.predicted),
      overlap_target=found.overlap_target[:, :overlaps],
      overlap_pred=found.overlap_pred[:, :overlaps],
      overlap_pixels=found.overlap_pixels[:, :overlaps])


def power_of_two(n: int, low: int, high: int) -> int:
  return min(max(1 << max(n - 1, 0).bit_length(), low), high)


def read_regions(found: regions_lib.Regions) -> regions_lib.Regions:
  """The device records cut to their counts, as numpy arrays.

  Cutting happens on the device at power-of-two sizes (one compilation per
  size), so only the real records travel.
  """
  size = found.overlap_target.shape[1]
  total = found.targets.image.shape[0]
  counts = jax.device_get((found.target_count, found.predicted_count,
                           found.overlap_count))
  taken = _take(found, targets=power_of_two(int(counts[0]), 16, total),
                predicted=power_of_two(int(np.max(counts[1], initial=0)), 16,
                                       total),
                overlaps=power_of_two(int(np.max(counts[2], initial=0)), 16,
                                      size))
  return jax.device_get(taken)


# Largest capacities used so far per batch shape: they only grow, so later
# batches reuse compiled code rather than compile a smaller size.
_SIZES = {}


def update(stats: VariantStats, probs, masks, valid) -> VariantStats:
  """Adds one (B, H, W) batch (device or host arrays); see `metrics.update`.

  Not jittable: the stages are jitted, with capacities chosen from the
  batch's counts, and the assignments run on the host. Entries without valid
  pixels are padding and count nowhere.
  """
  probs, masks, valid = jnp.asarray(probs), jnp.asarray(masks), jnp.asarray(
      valid)
  if probs.ndim != 3 or masks.shape != probs.shape or (
      valid.shape != probs.shape):
    raise ValueError(
        'update expects probs, masks and valid of one shape (B, H, W); got '
        f'{probs.shape}, {masks.shape} and {valid.shape}.')
  thresholds, layer_of_row = layer_of_rows(stats)
  arrays, summary, geometry = _summarize(probs, masks, valid, thresholds,
                                         relative=stats.relative)
  sizes = _SIZES.setdefault(probs.shape, {})
  capacity = power_of_two(max(int(summary.count), sizes.get('tiles', 0)),
                          batch_lib.MIN_CAPACITY, summary.active.size)
  sizes['tiles'] = capacity
  lanes, foreground = _gather(arrays, summary.active, summary.image_max,
                              thresholds, capacity=capacity,
                              relative=stats.relative)
  foreground = np.asarray(foreground)
  pixels = power_of_two(max(int(np.max(foreground)), sizes.get('pixels', 0)),
                        256, capacity * batch_lib.LANES)
  overlaps = power_of_two(max(int(foreground[0]), sizes.get('overlaps', 0)),
                          256, pixels)
  sizes['pixels'], sizes['overlaps'] = pixels, overlaps
  found = _label_and_regions(lanes, thresholds, relative=stats.relative,
                             capacity=pixels, overlap_capacity=overlaps)
  geometry = np.asarray(geometry)
  return add_regions(stats, read_regions(found), geometry[:, 0],
                     geometry[:, 1:], layer_of_row)


# -- the host side: matching and counting ------------------------------------


@dataclasses.dataclass
class _Components:
  """One layer's components on the host, sorted by image and label order."""
  image: np.ndarray
  area: np.ndarray
  centroid: np.ndarray  # (n, 2) float64 in the image's own coordinates
  start: np.ndarray     # (images,) first component of each image
  count: np.ndarray     # (images,)
  position: np.ndarray  # sorted position of each record


def _components(records: regions_lib.RegionList, offsets, num_images):
  image = np.asarray(records.image, np.int64)
  order = np.lexsort((records.key, image))
  position = np.empty_like(order)
  position[order] = np.arange(order.size)
  image = image[order]
  area = np.asarray(records.area, np.int64)[order]
  sums = []
  for high, low, axis in ((records.y_high, records.y_low, 0),
                          (records.x_high, records.x_low, 1)):
    total = (np.asarray(high, np.int64) * _SPLIT +
             np.asarray(low, np.int64))[order]
    # Exact integer sums in the image's own frame, divided once in float64:
    # scikit-image's regionprops centroid, bit for bit.
    sums.append(total - offsets[image, axis] * area)
  centroid = np.stack(sums, axis=1) / np.maximum(area, 1)[:, None]
  count = np.bincount(image, minlength=num_images)
  start = np.cumsum(count) - count
  return _Components(image, area, centroid, start, count, position)


def _distances(targets, predicted):
  """Centroid distances (M, N) as pyirstdmetrics' vectorized norm."""
  diff = targets[:, None, :] - predicted[None, :, :]
  return np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])


def _opdc(distance, iou):
  """pyirstdmetrics' OPDC matching of one image: (matched, candidates)."""
  valid_iou = iou >= OVERLAP_THRESHOLD
  valid_distance = distance < DISTANCE_THRESHOLD
  matched = np.zeros(distance.shape, bool)
  if valid_iou.any():
    rows, cols = optimize.linear_sum_assignment(distance)
    matched[rows, cols] = True
    matched &= valid_iou
  if valid_distance.any():
    free_rows = np.flatnonzero(~matched.any(axis=1))
    free_cols = np.flatnonzero(~matched.any(axis=0))
    rows, cols = optimize.linear_sum_assignment(
        distance[free_rows][:, free_cols])
    rows, cols = free_rows[rows], free_cols[cols]
    keep = valid_distance[rows, cols]
    matched[rows[keep], cols[keep]] = True
  return matched, valid_iou | valid_distance


def _greedy(distance):
  """BasicIRSTD's matching: targets in label order take the first free
  prediction (label order) closer than 3 px. Returns (target, pred) pairs."""
  free = np.ones(distance.shape[1], bool)
  pairs = []
  for i in range(distance.shape[0]):
    near = np.flatnonzero(free & (distance[i] < DISTANCE_THRESHOLD))
    if near.size:
      free[near[0]] = False
      pairs.append((i, near[0]))
  return pairs


def _layer_counts(targets: _Components, predicted: _Components, overlaps,
                  image_pixels) -> dict:
  """All matching counts of one threshold over a batch."""
  o_target, o_pred, o_pixels = overlaps
  o_target = targets.position[o_target]
  o_pred = predicted.position[o_pred]
  o_pixels = np.asarray(o_pixels, np.int64)
  pred_in_mask = np.bincount(o_pred, weights=o_pixels,
                             minlength=predicted.area.size)
  pred_area_of_image = np.bincount(predicted.image, weights=predicted.area,
                                   minlength=image_pixels.size)
  out = {f: 0 for f in _INT_FIELDS if not f.startswith('shooting')}
  out.update({f: 0.0 for f in _FLOAT_FIELDS})
  m_all, n_all = targets.count, predicted.count
  real = image_pixels > 0
  # Distance-only matching: every target and prediction counts once.
  out['distance_fp'] = int(np.sum(n_all[real]))
  out['distance_fn'] = int(np.sum(m_all[real]))
  out['distance_fa'] = int(np.sum(pred_area_of_image[real]))
  # OPDC, images without targets or without predictions: no assignment.
  trivial = real & ((m_all == 0) | (n_all == 0)) & (image_pixels >= 3)
  out.update(_phantoms(m_all[trivial], n_all[trivial]))
  out['opdc_fa'] = int(np.sum(pred_area_of_image[trivial]))
  # Pairs of each image, to fill the small per-image tables.
  image_of_pair = targets.image[o_target]
  pair_order = np.argsort(image_of_pair, kind='stable')
  pair_start = np.searchsorted(image_of_pair[pair_order],
                               np.arange(image_pixels.size))
  pair_end = np.searchsorted(image_of_pair[pair_order],
                             np.arange(image_pixels.size), side='right')
  for b in np.flatnonzero(real & ~trivial):
    m, n = int(m_all[b]), int(n_all[b])
    ts, ps = targets.start[b], predicted.start[b]
    t_area = targets.area[ts:ts + m]
    p_area = predicted.area[ps:ps + n]
    shape = (max(m, 1), max(n, 1))
    distance = np.full(shape, float(image_pixels[b]))
    inter = np.zeros(shape, np.int64)
    if m and n:
      distance[:m, :n] = _distances(targets.centroid[ts:ts + m],
                                    predicted.centroid[ps:ps + n])
      pairs = pair_order[pair_start[b]:pair_end[b]]
      inter[o_target[pairs] - ts, o_pred[pairs] - ps] = o_pixels[pairs]
    union = np.zeros(shape, np.int64)
    union[:m, :n] = t_area[:, None] + p_area[None, :] - inter[:m, :n]
    iou = np.divide(inter, union, out=np.zeros(shape), where=inter > 0)
    matched, candidates = _opdc(distance, iou)
    _add_opdc(out, matched, candidates, inter, union, p_area,
              pred_in_mask[ps:ps + n], t_area, m, n)
    if m and n:
      for i, j in _greedy(distance[:m, :n]):
        out['distance_tp'] += 1
        out['distance_fp'] -= 1
        out['distance_fn'] -= 1
        out['distance_fa'] -= int(p_area[j])
        out['distance_iou'] += iou[i, j]
  return out


def _phantoms(m, n) -> dict:
  """OPDC counts of images with no target or no prediction (arrays m, n).

  pyirstdmetrics sizes its tables max(M, 1) x max(N, 1): the padding row of
  an image without targets counts as a missed target (fn, pcp), the padding
  column of one without predictions as a false one (fp, itf). We keep that,
  to report the library's numbers.
  """
  rows, cols = np.maximum(m, 1), np.maximum(n, 1)
  return dict(opdc_fp=int(np.sum(cols)), opdc_fn=int(np.sum(rows)),
              loc_itf=int(np.sum(cols)), loc_pcp=int(np.sum(rows)))


def _add_opdc(out, matched, candidates, inter, union, p_area, pred_in_mask,
              t_area, m, n):
  """Adds one image's OPDC matching to the counts (hIoU error analysis)."""
  rows_matched = matched.any(axis=1)
  cols_matched = matched.any(axis=0)
  tp = int(np.count_nonzero(matched))
  out['opdc_tp'] += tp
  out['opdc_fp'] += matched.shape[1] - int(np.sum(cols_matched))
  out['opdc_fn'] += matched.shape[0] - int(np.sum(rows_matched))
  if n:
    out['opdc_fa'] += int(np.sum(p_area[~cols_matched[:n]]))
  free_cols = matched.shape[1] - int(np.sum(candidates.any(axis=0)))
  free_rows = matched.shape[0] - int(np.sum(candidates.any(axis=1)))
  out['loc_itf'] += free_cols
  out['loc_pcp'] += free_rows
  out['loc_m2s'] += (matched.shape[1] - int(np.sum(cols_matched))) - free_cols
  out['loc_s2m'] += (matched.shape[0] - int(np.sum(rows_matched))) - free_rows
  for i, j in zip(*np.nonzero(matched)):
    if i >= m or j >= n:  # a padding row or column (images under 3 pixels)
      continue
    shared, both = inter[i, j], union[i, j]
    out['opdc_iou'] += shared / both
    from_others = pred_in_mask[j] - shared
    out['seg_mrg'] += from_others / both
    out['seg_itf'] += (p_area[j] - shared - from_others) / both
    out['seg_pcp'] += (t_area[i] - shared) / both


def add_regions(stats: VariantStats, found: regions_lib.Regions,
                image_pixels, offsets, layer_of_row) -> VariantStats:
  """Adds a batch's host-side region records (`read_regions`).

  Args:
    stats: the statistics so far.
    found: numpy `Regions`, cut to their counts.
    image_pixels: (images,) pixels of each image (0: padding, not counted).
    offsets: (images, 2) top and left of each image in its batch entry.
    layer_of_row: the layer of `found` for each row of `stats`.

  Returns:
    The updated statistics.
  """
  image_pixels = np.asarray(image_pixels, np.int64)
  offsets = np.asarray(offsets, np.int64)
  num_images = image_pixels.size
  targets = _components(
      regions_lib.RegionList(*(f[:int(found.target_count)]
                               for f in found.targets)), offsets, num_images)
  counts = dict(stats.counts)
  counts['images'] = counts['images'] + int(np.sum(image_pixels > 0))
  counts['pixels'] = counts['pixels'] + int(np.sum(image_pixels))
  counts['targets'] = counts['targets'] + int(found.target_count)
  layers = {}
  for layer in sorted(set(int(r) for r in layer_of_row)):
    records = jax.tree.map(lambda a, k=layer: a[k], found.predicted)
    n = int(found.predicted_count[layer])
    records = regions_lib.RegionList(*(f[:n] for f in records))
    o = int(found.overlap_count[layer])
    layers[layer] = _layer_counts(
        targets, _components(records, offsets, num_images),
        (found.overlap_target[layer, :o], found.overlap_pred[layer, :o],
         found.overlap_pixels[layer, :o]), image_pixels)
    layers[layer]['shooting_hits'] = int(found.shooting_hits[layer])
    layers[layer]['shooting_fa'] = int(found.shooting_fa[layer])
  for name in _INT_FIELDS + _FLOAT_FIELDS:
    counts[name] = counts[name] + np.asarray(
        [layers[int(r)][name] for r in layer_of_row],
        counts[name].dtype)
  return dataclasses.replace(stats, counts=counts)
