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

Each tile belongs to one image through `tile_image`, so several images may
share a batch entry (`score` packs them, each starting on a tile
boundary): components and matches never cross between images.

Stages, so that `score` can pick capacities on the host and compile each
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

from irstd_jax.metrics import components as components_lib
from irstd_jax.metrics import matching

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


class TileGrid(NamedTuple):
  """What the dense pass knows about each tile."""
  max: jnp.ndarray          # (B, H/8, W/8) max probability over valid pixels
  min: jnp.ndarray          # ... min (both only meaningful if `known`)
  has_mask: jnp.ndarray     # bool
  valid_count: jnp.ndarray  # int32 valid pixels, or -1 if partly valid and
                            # not counted (the tile then is always active)
  unknown: jnp.ndarray      # bool: NaN or uncounted validity
  valid_max: Optional[jnp.ndarray]  # max probability over valid pixels, -inf
                                    # if none (relative variant only)


def _chunk_size(batch, pixels):
  if jax.default_backend() != 'cpu':
    return batch
  size = 1
  for s in range(1, batch + 1):
    if batch % s == 0 and s * pixels <= _CPU_CHUNK_PIXELS:
      size = s
  return size


def _tile_reduce(arrays, fn, prepare_fn=None):
  """fn(*prepare_fn(*chunk)) per chunk of the batch (see _CPU_CHUNK_PIXELS)."""
  batch, height, width = arrays[0].shape
  chunk = _chunk_size(batch, height * width)
  if chunk == batch:
    return fn(*(prepare_fn(*arrays) if prepare_fn else arrays))
  shape = (batch // chunk, chunk, height, width)

  def body(_, xs):
    # The barrier keeps each chunk's temporaries materialized: XLA:CPU is
    # far slower on tile reductions that fuse an elementwise producer.
    xs = lax.optimization_barrier(prepare_fn(*xs) if prepare_fn else xs)
    return None, fn(*xs)

  _, out = lax.scan(body, None, tuple(a.reshape(shape) for a in arrays))
  return [o.reshape((batch,) + o.shape[2:]) for o in out]


def _tiles_of(a):
  b, h, w = a.shape
  return a.reshape(b, h // TILE, TILE, w // TILE, TILE)


def grid_from_pixels(probs, mask_fg, valid, relative) -> TileGrid:
  """The dense pass for arbitrary validity (update's path)."""

  def encode(p, m, v):
    # q: p on valid pixels, 3 on mask pixels, -1 outside the valid region.
    q = jnp.where(v, jnp.where(m, 3.0, p), -1.0)
    return (q, jnp.where(v, p, -jnp.inf)) if relative else (q,)

  def extrema(q, *p):
    out = [_tiles_of(q).max(axis=(2, 4)), _tiles_of(q).min(axis=(2, 4))]
    return out + [_tiles_of(p[0]).max(axis=(2, 4))] if p else out

  out = _tile_reduce((probs, mask_fg, valid), extrema, encode)
  q_max, q_min = out[0], out[1]
  nan = jnp.isnan(q_max) | jnp.isnan(q_min)
  full = (q_min >= 0) & ~nan
  empty = (q_max < 0) & ~nan
  valid_count = jnp.where(full, LANES, jnp.where(empty, 0, -1))
  return TileGrid(q_max, q_min, (q_max >= 3) & ~nan, valid_count,
                  nan | (valid_count < 0), out[2] if relative else None)


def grid_from_extrema(probs, has_mask, valid_count, relative) -> TileGrid:
  """The dense pass when validity and mask tiles are known (the path of `score`).

  `probs` must repeat each image's last row and column up to its tile
  boundary, so that a tile's min and max are those of its valid pixels.
  """
  # No elementwise producer here, so no chunking: that is fastest on XLA:CPU.
  q_max = _tiles_of(probs).max(axis=(2, 4))
  q_min = _tiles_of(probs).min(axis=(2, 4))
  valid_max = jnp.where(valid_count > 0, q_max, -jnp.inf) if relative else None
  return TileGrid(q_max, q_min, has_mask, valid_count,
                  jnp.zeros(has_mask.shape, bool), valid_max)


def _per_image(values, tile_image, num_images, reduce='sum'):
  index = jnp.where(tile_image >= 0, tile_image, num_images).reshape(-1)
  values = values.reshape(-1)
  if reduce == 'max':
    return jnp.full((num_images,), -jnp.inf, values.dtype).at[index].max(
        values, mode='drop')
  return jnp.zeros((num_images,), values.dtype).at[index].add(
      values, mode='drop')


def summarize(grid: TileGrid, tile_image, num_images, threshold, roc, pd_fa,
              relative) -> Summary:
  """Which tiles are active, and what the quiet tiles add."""
  counted = grid.valid_count > 0
  simple = counted & ~grid.unknown & ~grid.has_mask
  iou_thresholds = jnp.concatenate([jnp.reshape(threshold, (1,)), roc])
  straddles = jnp.any((grid.min[..., None] <= iou_thresholds) &
                      (iou_thresholds < grid.max[..., None]), axis=-1)
  image_max = None
  peak = grid.max
  if relative:
    image_max = _per_image(grid.valid_max, tile_image, num_images, 'max')
    peak = grid.max / image_max[jnp.maximum(tile_image, 0)]
  detects = peak > jnp.min(pd_fa)
  active = grid.unknown | grid.has_mask | (simple & (straddles | detects))
  quiet = simple & ~active

  def quiet_pixels(above):
    return jnp.where(quiet & above, grid.valid_count, 0)

  return Summary(
      active=active, count=jnp.sum(active.astype(jnp.int32)),
      quiet_valid=_per_image(quiet_pixels(True), tile_image, num_images),
      quiet_pred=_per_image(quiet_pixels(grid.min > threshold), tile_image,
                            num_images),
      quiet_roc=jnp.stack([jnp.sum(quiet_pixels(grid.min > t)) for t in roc]),
      image_max=image_max)


class Lanes(NamedTuple):
  """The pixels of the active tiles; shapes depend on the capacity only."""
  tiles: components_lib.Tiles
  owner: jnp.ndarray   # (cap,) int32 image of each tile (-1: none)
  probs: jnp.ndarray   # (cap, 8, 8) float32
  mask: jnp.ndarray    # (cap, 8, 8) bool
  valid: jnp.ndarray   # (cap, 8, 8) bool
  scale: jnp.ndarray   # (cap,) float32 the image maximum (relative variant)


def gather(probs, mask_fg, tile_image, active, capacity, image_max=None, *,
           valid=None, boxes=None, order=None) -> Lanes:
  """Gathers the active tiles' pixels.

  Validity comes from the dense `valid` array, or from per-image `boxes`
  (images, 4) = (top, left, height, width) when images are rectangles.
  `order` lists the flat tile indices image by image when several images
  share a batch entry (see components.select_tiles).
  """
  tiles = components_lib.select_tiles(active, capacity, probs.shape, order)
  owner = jnp.where(tiles.ok, tile_image[tiles.image, tiles.row, tiles.col],
                    -1)
  tiles = components_lib.with_owners(tiles, owner)
  if boxes is None:
    v = components_lib.gather(tiles, valid)
  else:
    box = boxes[jnp.maximum(owner, 0)]
    offsets = jnp.arange(TILE, dtype=jnp.int32)
    y = tiles.row[:, None] * TILE + offsets[None, :] - box[:, :1]
    x = tiles.col[:, None] * TILE + offsets[None, :] - box[:, 1:2]
    v = (((y >= 0) & (y < box[:, 2:3]))[:, :, None] &
         ((x >= 0) & (x < box[:, 3:4]))[:, None, :])
  v = v & (owner >= 0)[:, None, None]
  scale = (jnp.ones(tiles.ok.shape, jnp.float32) if image_max is None else
           image_max[jnp.maximum(owner, 0)])
  return Lanes(tiles, owner, components_lib.gather(tiles, probs),
               components_lib.gather(tiles, mask_fg) & v, v, scale)


def _counts_above(values, valid, thresholds):
  """For each threshold, the number of selected values above it.

  One histogram over the sorted thresholds instead of one pass per threshold.
  """
  order = jnp.argsort(thresholds)
  ascending = thresholds[order]
  size = thresholds.shape[0]
  bins = sum((values > ascending[k]).astype(jnp.int32) for k in range(size))
  hist = jnp.zeros((size + 1,), jnp.int32).at[
      jnp.where(valid, bins, size + 1).reshape(-1)].add(1, mode='drop')
  above = jnp.cumsum(hist[::-1])[::-1][1:]  # above[k]: bins >= k + 1
  return jnp.zeros((size,), jnp.int32).at[order].set(above)


def count_lanes(lanes: Lanes, threshold, roc, pd_fa, relative) -> dict:
  """Per-tile pixel counts, ROC counts and foreground sizes of active tiles."""
  p, m, v = lanes.probs, lanes.mask, lanes.valid
  capacity = p.shape[0]
  predicted = (p > threshold) & v
  # Per tile: 0 invalid, 1 background, 2 predicted only, 3 mask only, 4 both.
  category = jnp.where(v, 1 + predicted.astype(jnp.int32) + 2 * m, 0)
  slot = jnp.arange(capacity, dtype=jnp.int32)[:, None, None] * 5 + category
  hist = jnp.zeros((capacity * 5,), jnp.int32).at[slot.reshape(-1)].add(
      1).reshape(capacity, 5)
  roc_tp = _counts_above(p, m, roc)
  roc_fp = _counts_above(p, v & ~m, roc)
  score = p / lanes.scale[:, None, None] if relative else p
  # The pixel lists of `pd_fa`: the mask's and the lowest threshold's.
  foreground = jnp.stack([jnp.sum(hist[:, 3:]),
                          jnp.sum((v & (score > jnp.min(pd_fa))).astype(
                              jnp.int32))])
  return dict(valid=jnp.sum(hist[:, 1:], axis=1), pred=hist[:, 2] + hist[:, 4],
              mask=hist[:, 3] + hist[:, 4], intersection=hist[:, 4],
              roc_tp=roc_tp, roc_fp=roc_fp, foreground=foreground)


class Layers(NamedTuple):
  """Connected components of the mask and of each Pd/Fa threshold's map.

  Row 0 of `selected`, `parent` and `found` is the mask, row 1 + k the
  prediction at threshold k; all rows share the pixel lists `mask` (row 0)
  and `base` (the lowest threshold's pixels, a superset of every row >= 1).
  """
  mask: components_lib.Pixels
  base: components_lib.Pixels
  selected: jnp.ndarray  # (1 + T, F) bool: the row's pixels in its list
  parent: jnp.ndarray    # (1 + T, F) int32: components_lib.label
  found: components_lib.Components  # stacked, leading axis 1 + T


def label_layers(lanes: Lanes, thresholds, relative, capacity) -> Layers:
  """Labels the mask and the prediction at every threshold.

  `capacity` must hold the mask's foreground pixels and those of the lowest
  threshold; higher thresholds select subsets of the latter's list. The mask
  and every threshold go through one `lax.map` body, so that labelling and
  component statistics compile once.
  """
  tiles = lanes.tiles
  score = lanes.probs / lanes.scale[:, None, None] if relative else lanes.probs
  sources = jnp.stack([lanes.mask,
                       (score > jnp.min(thresholds)) & lanes.valid])
  lists = lax.map(functools.partial(components_lib.select_pixels, tiles,
                                    capacity=capacity), sources)
  mask, base = (jax.tree.map(lambda a, i=i: a[i], lists) for i in (0, 1))
  base_score = score.reshape(-1)[base.lane]
  selected = jnp.concatenate([
      mask.ok[None], base.ok[None] & (base_score[None] > thresholds[:, None])])

  def label(args):
    index, ok = args
    pixels = jax.tree.map(lambda m, b: jnp.where(index == 0, m, b), mask,
                          base)
    parent = components_lib.label(pixels, ok)
    return parent, components_lib.components(pixels, parent, ok)

  parent, found = lax.map(label, (jnp.arange(selected.shape[0]), selected))
  return Layers(mask, base, selected, parent, found)


def pd_fa(lanes: Lanes, thresholds, relative, capacity) -> dict:
  """Targets, matched targets and false-alarm pixels at each threshold.

  See `label_layers` for `capacity`.
  """
  return pd_fa_of_layers(
      label_layers(lanes, thresholds, relative, capacity), lanes.tiles)


def pd_fa_of_layers(layers: Layers, tiles: components_lib.Tiles) -> dict:
  """`pd_fa` from labelled layers (BasicIRSTD's greedy matching)."""
  targets = matching.sort_targets(
      components_lib.compact_components(
          jax.tree.map(lambda a: a[0], layers.found)), tiles.ok.shape[0])
  predicted = jax.tree.map(lambda a: a[1:], layers.found)
  matched, hit_pixels = lax.map(
      lambda found: matching.greedy_match(found, targets), predicted)
  foreground = jnp.sum(layers.selected[1:].astype(jnp.int32), axis=1)
  return dict(targets=targets.components.count, matched=matched,
              fa_pixels=foreground - hit_pixels)


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
  grid = grid_from_pixels(probs, mask_fg, valid, relative)
  summary = summarize(grid, tile_image, probs.shape[0], threshold, roc,
                      thresholds, relative)
  if capacities is None:
    capacities = default_capacities(summary.active.size)

  def branch(capacity):
    lanes = gather(probs, mask_fg, tile_image, summary.active, capacity,
                   summary.image_max, valid=valid)
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
