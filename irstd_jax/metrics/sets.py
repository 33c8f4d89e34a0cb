"""Metrics of a whole set of 2-D maps of any sizes: `score(preds, masks)`.

For predictions already on the host (another method's outputs, a saved
evaluation). Images are packed into large canvases so that sets of any sizes
share compiled code; the staged functions take thresholds as traced arrays, so
new threshold values do not recompile anything either.
"""

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from irstd_jax.metrics import batch as batch_lib
from irstd_jax.metrics import counts
from irstd_jax.metrics import variants as variants_lib
from irstd_jax.metrics.streaming import FA_VARIANTS, _add, compute, init


@functools.partial(jax.jit, static_argnames=('num_images', 'relative'))
def _summarize(probs, has_mask, valid_count, tile_image, num_images, threshold,
               roc, pd_fa, relative):
  """The dense pass, and which images hold values outside [0, 1]."""
  grid = batch_lib.grid_from_extrema(probs, has_mask, valid_count, relative)
  bad = ((grid.max > 1) | (grid.min < 0)) & (valid_count > 0)
  bad = jnp.zeros((num_images,), bool).at[
      jnp.where(tile_image >= 0, tile_image, num_images)].max(bad, mode='drop')
  return batch_lib.summarize(grid, tile_image, num_images, threshold, roc,
                             pd_fa, relative), bad


@functools.partial(jax.jit, static_argnames=('capacity', 'relative'))
def _gather_and_count(probs, masks, tile_image, tile_order, boxes, active,
                      image_max, capacity, threshold, roc, pd_fa, relative):
  lanes = batch_lib.gather(probs, masks, tile_image, active, capacity,
                           image_max, boxes=boxes, order=tile_order)
  return lanes, batch_lib.count_lanes(lanes, threshold, roc, pd_fa, relative)


_pd_fa = jax.jit(batch_lib.pd_fa, static_argnames=('relative', 'capacity'))


@functools.partial(jax.jit, static_argnames=('relative', 'capacity',
                                             'overlap_capacity'))
def _pd_fa_and_regions(lanes, thresholds, relative, capacity,
                       overlap_capacity):
  """`pd_fa` and the variants' region records from one labelling."""
  layers = batch_lib.label_layers(lanes, thresholds, relative, capacity)
  return (batch_lib.pd_fa_of_layers(layers, lanes.tiles),
          variants_lib.regions_lib.regions(lanes, layers, thresholds, relative,
                                           overlap_capacity))


@functools.partial(jax.jit, static_argnames=('shared',))
def _combine(stats, summary, lanes, counted, found, shared):
  return _add(stats, batch_lib.combine(summary, lanes, counted, found, shared))


def _power_of_two(n: int, low: int, high: int) -> int:
  return min(max(1 << max(n - 1, 0).bit_length(), low), high)


def _score_batch(stats, canvas, members, preds, threshold, relative,
                 sizes, variant_stats=None, geometry=None):
  """`update` in stages, with capacities chosen on the host.

  Each stage then compiles once per shape or capacity (powers of two), and
  only for the capacities the data needs. `sizes` holds the largest
  capacities used so far in this call: they only grow, so later batches reuse
  compiled code rather than compile a smaller size. With `variant_stats`,
  the same labelling also yields the variants' region records; `geometry`
  (members, 3) holds each image's pixels, top and left.
  """
  curve = stats.pd_fa_thresholds
  shared = curve.index(threshold) if threshold in curve else None
  pd_fa = np.asarray(curve if shared is not None else (threshold,) + curve,
                     np.float32)
  values = dict(threshold=np.float32(threshold),
                roc=np.asarray(stats.roc_thresholds, np.float32), pd_fa=pd_fa)
  summary, bad = _summarize(canvas.probs, canvas.has_mask, canvas.valid_count,
                            canvas.tile_image, canvas.boxes.shape[0],
                            relative=relative, **values)
  bad = np.flatnonzero(np.asarray(bad)[:len(members)])
  if bad.size:
    index = members[bad[0]]
    _check_values(index, preds[index])
  capacity = _power_of_two(max(int(summary.count), sizes.get('tiles', 0)),
                           batch_lib.MIN_CAPACITY, summary.active.size)
  sizes['tiles'] = capacity
  lanes, counted = _gather_and_count(
      canvas.probs, canvas.masks, canvas.tile_image, canvas.tile_order,
      canvas.boxes, summary.active, summary.image_max, capacity=capacity,
      relative=relative, **values)
  # Reading `counted` also waits for the last stage that reads the canvas.
  pixels = _power_of_two(
      max(int(np.max(counted['foreground'])), sizes.get('pixels', 0)), 256,
      capacity * batch_lib.LANES)
  sizes['pixels'] = pixels
  if variant_stats is None:
    found = _pd_fa(lanes, pd_fa, relative=relative, capacity=pixels)
    return _combine(stats, summary, lanes, counted, found, shared=shared), None
  overlaps = _power_of_two(
      max(int(counted['foreground'][0]), sizes.get('overlaps', 0)), 256, pixels)
  sizes['overlaps'] = overlaps
  found, regions = _pd_fa_and_regions(lanes, pd_fa, relative=relative,
                                      capacity=pixels,
                                      overlap_capacity=overlaps)
  stats = _combine(stats, summary, lanes, counted, found, shared=shared)
  _, layer_of_row = variants_lib.layer_of_rows(variant_stats)
  variant_stats = variants_lib.add_regions(
      variant_stats, variants_lib.read_regions(regions), geometry[:, 0],
      geometry[:, 1:], layer_of_row)
  return stats, variant_stats


class _Canvas(NamedTuple):
  """Images packed into a (B, H, W) batch, with what the host knows of them
  (device arrays)."""
  probs: jax.Array        # float32, each image's edges repeated to its tiles
  masks: jax.Array        # bool
  tile_image: jax.Array   # (B, H/8, W/8) int32 image index, -1 elsewhere
  tile_order: jax.Array   # flat tile indices, image by image (then the rest)
  has_mask: jax.Array     # (B, H/8, W/8) bool
  valid_count: jax.Array  # (B, H/8, W/8) int32
  boxes: jax.Array        # (images, 4) int32 top, left, height, width


def _paint(images, places, probs, masks, num_images) -> _Canvas:
  """Packs images into the reused host buffers `probs` and `masks`.

  Pixels outside the images keep stale values: they lie in tiles of no
  image, which are never read.
  """
  tile = batch_lib.TILE
  grid = (probs.shape[0], probs.shape[1] // tile, probs.shape[2] // tile)
  tile_image = np.full(grid, -1, np.int32)
  has_mask = np.zeros(grid, bool)
  valid_count = np.zeros(grid, np.int32)
  boxes = np.zeros((num_images, 4), np.int32)
  for k, ((pred, mask), (c, top, left)) in enumerate(zip(images, places)):
    h, w = pred.shape
    bottom, right = _round_up(top + h), _round_up(left + w)
    probs[c, top:top + h, left:left + w] = pred
    # Repeat the last row and column up to the tile boundary, so that tile
    # extrema only see the image's own values.
    if bottom > top + h:
      probs[c, top + h:bottom, left:left + w] = pred[-1]
    if right > left + w:
      probs[c, top:bottom, left + w:right] = probs[c, top:bottom,
                                                   left + w - 1:left + w]
    masks[c, top:top + h, left:left + w] = mask
    rows = slice(top // tile, bottom // tile)
    cols = slice(left // tile, right // tile)
    tile_image[c, rows, cols] = k
    valid_count[c, rows, cols] = _tile_valid_counts(h, w)
    flat = np.flatnonzero(mask)  # much faster than np.nonzero on sparse masks
    has_mask[c, (top + flat // w) // tile, (left + flat % w) // tile] = True
    boxes[k] = (top, left, h, w)
  owners = tile_image.reshape(-1)
  # Stable sort of small integers: numpy uses a linear-time radix sort.
  key_type = np.int16 if num_images < 2**15 else np.int32
  order = np.argsort(np.where(owners < 0, num_images, owners).astype(key_type),
                     kind='stable')
  # On CPU the big buffers are aliased, not copied (see _aligned_zeros); the
  # small ones are transferred once per batch, shared by the stages.
  return _Canvas(jax.device_put(probs, may_alias=True),
                 jax.device_put(masks, may_alias=True),
                 *jax.device_put((tile_image, order.astype(np.int32),
                                  has_mask, valid_count, boxes)))


@functools.lru_cache(maxsize=64)
def _tile_valid_counts(height: int, width: int) -> np.ndarray:
  """Valid pixels of each tile of an image placed on a tile boundary."""
  tile = batch_lib.TILE
  rows = np.minimum(tile, height - np.arange(0, height, tile))
  cols = np.minimum(tile, width - np.arange(0, width, tile))
  return np.outer(rows, cols).astype(np.int32)


def _aligned_zeros(shape, dtype) -> np.ndarray:
  """Zeros on a 64-byte boundary: XLA:CPU can then alias the host buffer.

  `score` refills the buffer for the next batch only after the stages
  that read it have been synchronized.
  """
  size = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.zeros(size + 64, np.uint8)
  start = -raw.ctypes.data % 64
  return raw[start:start + size].view(dtype).reshape(shape)


# Images are packed into canvases of at least this side, each starting on a
# tile boundary (tiles belong to one image, so nothing crosses between them).
_CANVAS = 1024


def _bucket(size: int) -> int:
  """Rounds a side up to 32, 48, 64, 96, 128, ... (at most 1.5x padding)."""
  side = 32
  while side < size:
    side = side * 3 // 2 if side & (side - 1) == 0 else side * 4 // 3
  return side


def _round_up(n: int, multiple: int = batch_lib.TILE) -> int:
  return -(-n // multiple) * multiple


def _pack(shapes, height, width):
  """Shelf packing, tallest first: (canvas, top, left) of each image."""
  order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0])
  places = [None] * len(shapes)
  canvas, top, left, shelf = 0, 0, 0, 0
  for i in order:
    h, w = shapes[i]
    if left and left + w > width:
      top, left, shelf = _round_up(top + shelf), 0, 0
    if top + h > height:
      canvas, top, left, shelf = canvas + 1, 0, 0, 0
    places[i] = (canvas, top, left)
    left = _round_up(left + w)
    shelf = max(shelf, h)
  return places


def _check_shape(index: int, pred, mask) -> tuple:
  """Shape checks of one (pred, mask) pair, before anything is converted."""
  shape, mask_shape = np.shape(pred), np.shape(mask)
  if len(shape) != 2 or len(mask_shape) != 2:
    raise ValueError(f'Image {index}: prediction and mask must be 2-D (H, W); '
                     f'got shapes {shape} and {mask_shape}. Squeeze channel '
                     'axes first.')
  if shape != mask_shape:
    raise ValueError(f'Image {index}: prediction shape {shape} differs from '
                     f'mask shape {mask_shape}.')
  if not shape[0] or not shape[1]:
    raise ValueError(f'Image {index} is empty: shape {shape}.')
  if shape[0] * shape[1] > 2**23 or max(shape) > 2**15:
    raise ValueError(f'Image {index} has shape {shape}; at most 2**23 pixels '
                     'and 2**15 per side are supported (exact int32 '
                     'centroids).')
  return tuple(shape)


def _check_image(index: int, pred, mask):
  """Value checks of one (pred, mask) pair; returns float32, bool."""
  pred = np.asarray(pred).astype(np.float32, copy=False)
  mask = np.asarray(mask)
  # One pass: a NaN makes the sum NaN (XLA:CPU's min / max may drop NaN, so
  # only the [0, 1] range is checked on the device, see _summarize).
  if np.isnan(np.sum(pred)):
    if np.isnan(pred).any():
      raise ValueError(f'Image {index}: the prediction contains NaN.')
  if mask.dtype != bool:
    top = mask.max()
    low = 0 if mask.dtype.kind == 'u' else mask.min()
    # Integers within [0, 1] are binary; otherwise count the values.
    binary = (top == 0 or (mask.dtype.kind in 'ui' and top <= 1) or
              np.count_nonzero(mask) == np.count_nonzero(mask == top))
    if low < 0 or top not in (0, 1, 255) or not binary:
      values = np.unique(mask)
      raise ValueError(f'Image {index}: mask values must be {{0, 1}} or '
                       f'{{0, 255}}, got {values[:10].tolist()}.')
    one_byte = mask.dtype.itemsize == 1 and mask.dtype.kind in 'ui'
    mask = mask.view(bool) if one_byte and top <= 1 else mask != 0
  return pred, mask


def _check_values(index: int, pred):
  pred = np.asarray(pred, np.float32)
  low, high = pred.min(), pred.max()
  raise ValueError(f'Image {index}: prediction values must be probabilities '
                   f'in [0, 1], got [{low}, {high}]; apply a sigmoid to '
                   'logits.')


def score(preds: Sequence, masks: Sequence, threshold: float = 0.5, *,
          roc_thresholds: Optional[Sequence[float]] = None,
          pd_fa_thresholds: Optional[Sequence[float]] = None,
          pd_fa_relative: bool = False, fa_variant: str = 'basicirstd',
          variants: bool = True, batch_pixels: int = 1 << 22) -> dict:
  """Metrics of a whole set of 2-D maps of possibly different sizes.

  Images are packed into canvases (at least 1024x1024; each image starts on
  an 8-px tile boundary and owns its tiles, so nothing crosses between
  images) and evaluated in jitted batches of about `batch_pixels` pixels, so
  sets of any sizes share compiled code.

  Args:
    preds: sequence of (H, W) probability maps in [0, 1].
    masks: sequence of (H, W) masks, {0, 1} or {0, 255} (or bool).
    threshold: strict > threshold for IoU, P/R/F1 and Pd/Fa.
    roc_thresholds: see `init` (`thresholds`).
    pd_fa_thresholds: see `init`.
    pd_fa_relative: GaNet's Pd/Fa on each map divided by its own maximum.
    fa_variant: 'basicirstd' (Fa = false pixels / all pixels of the set) or
      'gglnet' (GGL-Net's code: predicted minus matched pixels, divided by the
      number of images times the pixels of the last image, the same number
      when all images share one size).
    variants: also the target-level variants (`metrics.variants`: shooting
      rule, OPDC, hIoU and its error terms), from the same labelling plus a
      host-side assignment per image.
    batch_pixels: pixels per jitted batch.

  Returns:
    The dict of `compute` (with the variant keys when `variants`).

  Raises:
    ValueError: naming the image index, for non-2-D arrays, shape mismatches,
      NaN or values outside [0, 1] in a prediction, or masks with values
      other than {0, 1} / {0, 255}.
  """
  if fa_variant not in FA_VARIANTS:
    raise ValueError(f'fa_variant must be one of {FA_VARIANTS}, got '
                     f'{fa_variant!r}.')
  if len(preds) != len(masks):
    raise ValueError(f'Got {len(preds)} predictions and {len(masks)} masks.')
  if not len(preds):
    raise ValueError('score needs at least one image.')
  shapes = [_check_shape(i, p, m) for i, (p, m) in enumerate(zip(preds,
                                                                  masks))]
  height = max(_CANVAS, _bucket(max(h for h, _ in shapes)))
  width = max(_CANVAS, _bucket(max(w for _, w in shapes)))
  places = _pack(shapes, height, width)
  canvases = max(c for c, _, _ in places) + 1
  per_batch = max(1, min(batch_pixels, 2**31 - 1) // (height * width))
  per_batch = min(per_batch, canvases)
  stats = init(roc_thresholds, pd_fa_thresholds)
  variant_stats = variants_lib.init(
      threshold, pd_fa_thresholds, pd_fa_relative) if variants else None
  sizes = {}
  probs = _aligned_zeros((per_batch, height, width), np.float32)
  mask_canvas = _aligned_zeros((per_batch, height, width), bool)
  for first in range(0, canvases, per_batch):
    members = [i for i, (c, _, _) in enumerate(places)
               if first <= c < first + per_batch]
    canvas = _paint([_check_image(i, preds[i], masks[i]) for i in members],
                    [(places[i][0] - first,) + places[i][1:] for i in members],
                    probs, mask_canvas,
                    _power_of_two(len(members), 64, 1 << 30))
    geometry = np.asarray([(shapes[i][0] * shapes[i][1],) + places[i][1:]
                           for i in members], np.int64)
    stats, variant_stats = _score_batch(
        stats, canvas, members, preds, float(threshold), pd_fa_relative,
        sizes, variant_stats, geometry)
  result = compute(stats, variant_stats)
  if fa_variant == 'gglnet':
    last = np.asarray(preds[-1]).size * len(preds)
    result['fa'] = result['fa_pixels'] / last
    result['pd_fa_curve']['fa'] = counts.to_int(stats.fa_pixels)[1:] / last
  return result
