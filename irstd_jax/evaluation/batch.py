"""Per-batch sufficient statistics of all metrics, as exact int32 counts.

The batch is cut into 8x8 tiles. One dense pass (in chunks, which keeps
XLA:CPU's temporaries in cache) records each tile's min and max probability
and whether it holds mask or padding pixels. A tile that is fully valid, has
no mask pixel, no predicted pixel at the Pd/Fa thresholds and no probability
straddling an IoU/ROC threshold is "quiet": it adds 0 or 64 pixels to every
count, known from its min alone. The other tiles are "active": their pixels
("lanes") are gathered into a list of static capacity for the pixel counts,
and the foreground pixels among them into shorter lists for the connected
components and the Pd matching.

Each tile belongs to one image through `tile_image` (so several images may
share a batch entry, as `evaluate` packs them; images must then be at least
4 px apart so that no component or match crosses between them).

Stages, so that `evaluate` can pick capacities on the host and compile each
stage once per capacity: `summarize` (dense), `gather` + `count_lanes`
(tile capacity), `pd_fa` (pixel capacity), `combine`. `batch_counts` chains
them in one graph for `update`, with a `lax.switch` over tile capacities whose
largest is all tiles, so the answer never depends on the capacity.
"""

import functools
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp

from irstd_jax.evaluation import components as components_lib
from irstd_jax.evaluation import matching

TILE = components_lib.TILE
LANES = components_lib.LANES
# Pixels per chunk of the dense pass on CPU (4 MiB of float32): measured
# fastest on XLA:CPU; one 512x512 image per chunk is several times slower.
_CPU_CHUNK_PIXELS = 1 << 20
MIN_CAPACITY = 64


def default_capacities(num_tiles: int) -> tuple:
  """Tile capacities tried in order; the last one always fits."""
  caps = {max(MIN_CAPACITY, num_tiles // 64), max(MIN_CAPACITY,
                                                  num_tiles // 8)}
  return tuple(sorted(c for c in caps if c < num_tiles)) + (num_tiles,)


def pad_to_tiles(probs, masks, valid):
  """Pads H and W up to multiples of 8 with invalid pixels."""
  _, height, width = probs.shape
  pad = ((0, 0), (0, -height % TILE), (0, -width % TILE))
  if pad[1][1] or pad[2][1]:
    probs, masks = jnp.pad(probs, pad), jnp.pad(masks, pad)
    valid = jnp.pad(valid, pad)
  return probs, masks, valid


def check_batch(shape):
  batch, height, width = shape
  if batch * height * width >= 2**31 or height * width > 2**23:
    raise ValueError(
        f'A batch of {batch}x{height}x{width} pixels is too large: batches '
        'must stay below 2**31 pixels and images at or below 2**23 pixels '
        '(exact int32 counts and centroids); split the batch.')


def prepare(probs, masks, valid):
  probs = probs.astype(jnp.float32)
  valid = valid.astype(bool)
  return probs, (masks > 0.5) & valid, valid


def pd_fa_thresholds(threshold, curve):
  """Thresholds to label, and the row of `threshold` among them.

  A concrete `threshold` already on the curve is labelled only once.
  """
  curve = tuple(float(t) for t in curve)
  if isinstance(threshold, (int, float)) and float(threshold) in curve:
    return jnp.asarray(curve, jnp.float32), curve.index(float(threshold))
  return jnp.concatenate([jnp.asarray(threshold, jnp.float32)[None],
                          jnp.asarray(curve, jnp.float32).reshape(-1)]), None


def per_entry_tile_image(shape) -> jnp.ndarray:
  """tile_image for one image per batch entry."""
  batch, height, width = shape
  return jnp.broadcast_to(
      jnp.arange(batch, dtype=jnp.int32)[:, None, None],
      (batch, height // TILE, width // TILE))


class Summary(NamedTuple):
  active: jnp.ndarray        # (B, H/8, W/8) bool
  count: jnp.ndarray         # () active tiles
  quiet_valid: jnp.ndarray   # (images,) valid pixels of quiet tiles
  quiet_pred: jnp.ndarray    # (images,) quiet pixels above the threshold
  quiet_roc: jnp.ndarray     # (K,) quiet pixels above each ROC threshold
  image_max: Optional[jnp.ndarray]  # (images,) for the relative variant


def _chunk_size(batch, pixels):
  if jax.default_backend() != 'cpu':
    return batch
  size = 1
  for s in range(1, batch + 1):
    if batch % s == 0 and s * pixels <= _CPU_CHUNK_PIXELS:
      size = s
  return size


def _tile_extrema(probs, mask_fg, valid, want_max):
  """Per tile: max and min of q (p, 3 on mask pixels, -1 outside valid), and
  with `want_max` the max of p over valid pixels."""
  batch, height, width = probs.shape
  chunk = _chunk_size(batch, height * width)

  def tiles_of(a):
    return a.reshape(a.shape[0], height // TILE, TILE, width // TILE, TILE)

  def summarize_chunk(p, m, v, barrier):
    q = jnp.where(v, jnp.where(m, 3.0, p), -1.0)
    if barrier:
      # Keeps q materialized per chunk: XLA:CPU is far slower on tile
      # reductions that fuse an elementwise producer.
      q = lax.optimization_barrier(q)
    out = [tiles_of(q).max(axis=(2, 4)), tiles_of(q).min(axis=(2, 4))]
    if want_max:
      out.append(tiles_of(jnp.where(v, p, -jnp.inf)).max(axis=(2, 4)))
    return out

  if chunk == batch:
    return summarize_chunk(probs, mask_fg, valid, False)
  shape = (batch // chunk, chunk, height, width)
  _, out = lax.scan(
      lambda _, xs: (None, summarize_chunk(*xs, True)), None,
      (probs.reshape(shape), mask_fg.reshape(shape), valid.reshape(shape)))
  return [o.reshape((batch,) + o.shape[2:]) for o in out]


def _per_image(values, tile_image, num_images, reduce='sum'):
  index = jnp.where(tile_image >= 0, tile_image, num_images).reshape(-1)
  values = values.reshape(-1)
  if reduce == 'max':
    return jnp.full((num_images,), -jnp.inf, values.dtype).at[index].max(
        values, mode='drop')
  return jnp.zeros((num_images,), values.dtype).at[index].add(
      values, mode='drop')


def summarize(probs, mask_fg, valid, tile_image, num_images, threshold, roc,
              pd_fa, relative) -> Summary:
  """The dense pass: which tiles are active, and what quiet tiles add."""
  extrema = _tile_extrema(probs, mask_fg, valid, relative)
  tile_max, tile_min = extrema[0], extrema[1]
  nan = jnp.isnan(tile_max) | jnp.isnan(tile_min)
  empty = (tile_max < 0) & ~nan
  # Fully valid, no mask pixel (those read 3), no NaN: min and max are the
  # probability's.
  simple = (tile_min >= 0) & (tile_max < 3) & ~nan
  iou_thresholds = jnp.concatenate([jnp.reshape(threshold, (1,)), roc])
  straddles = jnp.any((tile_min[..., None] <= iou_thresholds) &
                      (iou_thresholds < tile_max[..., None]), axis=-1)
  image_max = None
  peak = tile_max
  if relative:
    image_max = _per_image(extrema[2], tile_image, num_images, 'max')
    scale = image_max[jnp.maximum(tile_image, 0)]
    peak = tile_max / scale
  detects = peak > jnp.min(pd_fa)
  active = (~simple & ~empty) | (simple & (straddles | detects))
  quiet = simple & ~active

  def quiet_pixels(above):
    return LANES * (quiet & above).astype(jnp.int32)

  return Summary(
      active=active, count=jnp.sum(active.astype(jnp.int32)),
      quiet_valid=_per_image(quiet_pixels(True), tile_image, num_images),
      quiet_pred=_per_image(quiet_pixels(tile_min > threshold), tile_image,
                            num_images),
      quiet_roc=jnp.stack([jnp.sum(quiet_pixels(tile_min > t)) for t in roc]),
      image_max=image_max)


class Lanes(NamedTuple):
  """The pixels of the active tiles; shapes depend on the capacity only."""
  tiles: components_lib.Tiles
  owner: jnp.ndarray   # (cap,) int32 image of each tile (-1: none)
  probs: jnp.ndarray   # (cap, 8, 8) float32
  mask: jnp.ndarray    # (cap, 8, 8) bool
  valid: jnp.ndarray   # (cap, 8, 8) bool
  scale: jnp.ndarray   # (cap,) float32 the image maximum (relative variant)


def gather(probs, mask_fg, valid, tile_image, active, capacity,
           image_max=None) -> Lanes:
  tiles = components_lib.select_tiles(active, capacity, probs.shape)
  ok = tiles.ok[:, None, None]
  v = components_lib.gather(tiles, valid) & ok
  owner = jnp.where(tiles.ok, tile_image[tiles.image, tiles.row, tiles.col],
                    -1)
  scale = (jnp.ones(tiles.ok.shape, jnp.float32) if image_max is None else
           image_max[jnp.maximum(owner, 0)])
  return Lanes(tiles, owner, components_lib.gather(tiles, probs),
               components_lib.gather(tiles, mask_fg) & v, v, scale)


def _pd_fa_foreground(lanes: Lanes, t, relative):
  score = lanes.probs / lanes.scale[:, None, None] if relative else lanes.probs
  return (score > t) & lanes.valid


def count_lanes(lanes: Lanes, threshold, roc, pd_fa, relative) -> dict:
  """Per-tile pixel counts, ROC counts and foreground sizes of active tiles."""
  p, m, v = lanes.probs, lanes.mask, lanes.valid

  def per_tile(pixels):
    return jnp.sum(pixels.astype(jnp.int32), axis=(1, 2))

  def total(pixels):
    return jnp.sum(pixels.astype(jnp.int32))

  predicted = (p > threshold) & v
  roc_tp = jnp.stack([total((p > t) & m) for t in roc])
  roc_fp = jnp.stack([total((p > t) & v & ~m) for t in roc])
  foreground = jnp.stack([total(m)] + [
      total(_pd_fa_foreground(lanes, pd_fa[i], relative))
      for i in range(pd_fa.shape[0])])
  return dict(valid=per_tile(v), pred=per_tile(predicted), mask=per_tile(m),
              intersection=per_tile(predicted & m), roc_tp=roc_tp,
              roc_fp=roc_fp, foreground=foreground)


def pd_fa(lanes: Lanes, thresholds, relative, capacity) -> dict:
  """Targets, matched targets and false-alarm pixels at each threshold.

  `capacity` must hold the mask's and every threshold's foreground pixels.
  """
  tiles = lanes.tiles
  mask = components_lib.select_pixels(lanes.mask, capacity)
  targets = components_lib.components(
      tiles, mask, components_lib.label(tiles, mask), compacted=True)
  groups = tiles.ok.shape[0]

  def at(t):
    fg = components_lib.select_pixels(
        _pd_fa_foreground(lanes, t, relative), capacity)
    found = components_lib.components(tiles, fg, components_lib.label(
        tiles, fg))
    hits, hit_pixels = matching.greedy_match(found, targets, groups)
    return hits, fg.count - hit_pixels

  matched, fa_pixels = lax.map(at, thresholds)
  return dict(targets=targets.count, matched=matched, fa_pixels=fa_pixels)


def combine(summary: Summary, lanes: Lanes, counted: dict, found: dict,
            shared) -> dict:
  """Batch totals from the quiet tiles and the active pixels."""
  num_images = summary.quiet_valid.shape[0]

  def per_image(per_tile):
    return _per_image(per_tile, lanes.owner, num_images)

  valid_pixels = summary.quiet_valid + per_image(counted['valid'])
  pred_pixels = summary.quiet_pred + per_image(counted['pred'])
  mask_pixels = per_image(counted['mask'])
  intersection = per_image(counted['intersection'])
  union = pred_pixels + mask_pixels - intersection
  has_pixels = valid_pixels > 0
  iou = jnp.where(union > 0, intersection.astype(jnp.float32) /
                  jnp.maximum(union, 1).astype(jnp.float32), 0.0)
  matched, fa_pixels = found['matched'], found['fa_pixels']
  if shared is not None:
    matched = jnp.concatenate([matched[shared:shared + 1], matched])
    fa_pixels = jnp.concatenate([fa_pixels[shared:shared + 1], fa_pixels])
  return dict(
      images=jnp.sum(has_pixels.astype(jnp.int32)),
      valid_pixels=jnp.sum(valid_pixels), pred_pixels=jnp.sum(pred_pixels),
      mask_pixels=jnp.sum(mask_pixels), intersection=jnp.sum(intersection),
      union=jnp.sum(union), iou_sum=jnp.sum(jnp.where(has_pixels, iou, 0.0)),
      roc_tp=counted['roc_tp'], roc_fp=counted['roc_fp'] + summary.quiet_roc,
      targets=found['targets'], matched=matched, fa_pixels=fa_pixels)


def batch_counts(probs, masks, valid, threshold, roc_thresholds,
                 curve_thresholds, relative, capacities=None):
  """Counts for one batch (H and W multiples of 8), in one jittable graph.

  Args:
    probs: (B, H, W) float probabilities; one image per entry.
    masks: (B, H, W) masks; a pixel is a target pixel when > 0.5.
    valid: (B, H, W) bool; False pixels count nowhere.
    threshold: scalar; a pixel is predicted when prob > threshold.
    roc_thresholds: static tuple of floats.
    curve_thresholds: static tuple of floats, extra Pd/Fa thresholds.
    relative: static bool; Pd/Fa threshold prob / (max prob of its image)
      (GaNet's code) instead of prob.
    capacities: static ascending tile capacities, or None for the default.

  Returns:
    dict of int32 arrays (and `iou_sum` float32); `matched` and `fa_pixels`
    hold the Pd/Fa counts at `threshold` first, then at `curve_thresholds`.
  """
  check_batch(probs.shape)
  probs, mask_fg, valid = prepare(probs, masks, valid)
  thresholds, shared = pd_fa_thresholds(threshold, curve_thresholds)
  threshold = jnp.asarray(threshold, jnp.float32)
  roc = jnp.asarray(roc_thresholds, jnp.float32).reshape(-1)
  tile_image = per_entry_tile_image(probs.shape)
  summary = summarize(probs, mask_fg, valid, tile_image, probs.shape[0],
                      threshold, roc, thresholds, relative)
  if capacities is None:
    capacities = default_capacities(summary.active.size)

  def branch(capacity):
    lanes = gather(probs, mask_fg, valid, tile_image, summary.active,
                   capacity, summary.image_max)
    counted = count_lanes(lanes, threshold, roc, thresholds, relative)
    found = pd_fa(lanes, thresholds, relative, capacity * LANES)
    return combine(summary, lanes, counted, found, shared)

  branches = [functools.partial(branch, c) for c in capacities]
  if len(branches) == 1:
    out = branches[0]()
  else:
    choice = jnp.sum((jnp.asarray(capacities[:-1]) < summary.count).astype(
        jnp.int32))
    out = lax.switch(choice, branches)
  out['tile_overflow'] = jnp.maximum(summary.count - capacities[-1], 0)
  return out
