"""Per-batch region records for the target-level metric variants, on device.

The one-to-one matching rules of `variants` (OPDC, distance-only, the hIoU
error analysis) need, per image and threshold, every target's and every
predicted component's area and exact centroid, and the pixels each (target,
prediction) pair shares. `regions` computes them from the labelled layers of
`batch.label_layers` and writes them to the front of fixed-size lists, which
the host cuts to their counts (`take`) before reading them. The shooting rule
needs no assignment: it is counted here in full.

Centroids are kept as exact integer sums (128 * high + low, int32 words), so
that the host can divide them in float64 exactly as scikit-image does.
"""

from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from irstd_jax.metrics import batch as batch_lib
from irstd_jax.metrics import components as components_lib

TILE = components_lib.TILE
LANES = components_lib.LANES
_SPLIT = 128
_INT_MAX = np.iinfo(np.int32).max
# The shooting rule (Li et al., TNNLS 2023, as pyirstdmetrics): a target is hit
# when a predicted pixel lies in the (2r+1)^2 box around one of its pixels,
# r = 1; predicted pixels outside the boxes of r = 4 around every target
# pixel are false alarms.
HIT_RADIUS = 1
FA_RADIUS = 4


class RegionList(NamedTuple):
  """Components in list order: the first `count` entries are real."""
  image: jnp.ndarray   # int32 image index (the batch entry, or score's image)
  key: jnp.ndarray     # int32 raster index of the first pixel (label order)
  area: jnp.ndarray    # int32
  y_high: jnp.ndarray  # int32: sum of rows = 128 * y_high + y_low
  y_low: jnp.ndarray
  x_high: jnp.ndarray  # int32: sum of columns, likewise
  x_low: jnp.ndarray


class Regions(NamedTuple):
  """What the host needs of one batch; T = number of Pd/Fa thresholds."""
  target_count: jnp.ndarray     # ()
  targets: RegionList           # fields (F,)
  predicted_count: jnp.ndarray  # (T,)
  predicted: RegionList         # fields (T, F)
  overlap_count: jnp.ndarray    # (T,)
  overlap_target: jnp.ndarray   # (T, O) index into `targets`
  overlap_pred: jnp.ndarray     # (T, O) index into `predicted` at that row
  overlap_pixels: jnp.ndarray   # (T, O) pixels the pair shares
  shooting_hits: jnp.ndarray    # (T,) targets hit under the shooting rule
  shooting_fa: jnp.ndarray      # (T,) false-alarm pixels under the rule


def _neighbor_tables(radius: int):
  """For each lane and offset of the (2r+1)^2 box: (tile block slot, lane)."""
  i = np.repeat(np.arange(TILE), TILE)
  j = np.tile(np.arange(TILE), TILE)
  tables = []
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      ni, nj = i + dy, j + dx
      slot = (np.floor_divide(ni, TILE) + 1) * 3 + np.floor_divide(nj, TILE) + 1
      tables.append((slot.astype(np.int32),
                     ((ni % TILE) * TILE + nj % TILE).astype(np.int32)))
  return tables


_HIT_TABLES = _neighbor_tables(HIT_RADIUS)


def _box_max(lanes: batch_lib.Lanes, score, lane):
  """Per listed pixel, the max score of valid pixels in its 3x3 box.

  -inf where the box holds no valid pixel of the pixel's own image (links to
  other images' tiles are cut, see components.with_owners).
  """
  neighbors = lanes.tiles.neighbors
  flat_score = score.reshape(-1)
  flat_valid = lanes.valid.reshape(-1)
  tile, local = lane // LANES, lane % LANES
  best = jnp.full(lane.shape, -jnp.inf, jnp.float32)
  for slot, neighbor_lane in _HIT_TABLES:
    other_tile = neighbors[tile, jnp.asarray(slot)[local]]
    other = jnp.maximum(other_tile, 0) * LANES + jnp.asarray(
        neighbor_lane)[local]
    ok = (other_tile >= 0) & flat_valid[other]
    best = jnp.maximum(best, jnp.where(ok, flat_score[other], -jnp.inf))
  return best


def _near_mask(lanes: batch_lib.Lanes) -> jnp.ndarray:
  """(cap, 8, 8): pixels within Chebyshev distance FA_RADIUS of a target pixel.

  Dilates each tile's 24x24 block of its 3x3 tile neighbourhood (inactive
  neighbours hold no mask pixel: mask tiles are always active).
  """
  neighbors = lanes.tiles.neighbors
  capacity = neighbors.shape[0]
  block = jnp.where((neighbors >= 0)[:, :, None, None],
                    lanes.mask[jnp.maximum(neighbors, 0)], False)
  block = block.reshape(capacity, 3, 3, TILE, TILE).transpose(
      0, 1, 3, 2, 4).reshape(capacity, 3 * TILE, 3 * TILE)
  r = FA_RADIUS
  rows = jnp.zeros((capacity, TILE, 3 * TILE), bool)
  for k in range(2 * r + 1):
    rows = rows | block[:, TILE - r + k:2 * TILE - r + k, :]
  near = jnp.zeros((capacity, TILE, TILE), bool)
  for k in range(2 * r + 1):
    near = near | rows[:, :, TILE - r + k:2 * TILE - r + k]
  return near


def _records(pixels: components_lib.Pixels, owner, selected, parent, found):
  """One layer's components, written to the front in list order."""
  size = selected.shape[0]
  roots = found.ok
  rank = jnp.cumsum(roots.astype(jnp.int32)) - 1
  slot = jnp.where(roots, rank, size)

  def total(values):
    return jax.ops.segment_sum(jnp.where(selected, values, 0), parent, size)

  y, x = pixels.y, pixels.x
  fields = (owner[pixels.lane // LANES], found.key, found.area,
            total(y // _SPLIT), total(y % _SPLIT), total(x // _SPLIT),
            total(x % _SPLIT))
  out = RegionList(*(jnp.zeros((size,), jnp.int32).at[slot].set(
      f, mode='drop') for f in fields))
  return out, rank, jnp.sum(roots.astype(jnp.int32))


def _overlaps(target_rank, pred_rank, keep, capacity):
  """Distinct (target, prediction) pairs and their shared pixels.

  `target_rank`, `pred_rank` and `keep` are per intersection pixel; pairs are
  found by sorting, so that no pair table of targets x predictions exists.
  """
  first = jnp.where(keep, target_rank, _INT_MAX)
  second = jnp.where(keep, pred_rank, _INT_MAX)
  first, second = lax.sort((first, second), num_keys=2)
  real = first != _INT_MAX
  start = real & jnp.concatenate([
      jnp.ones((1,), bool),
      (first[1:] != first[:-1]) | (second[1:] != second[:-1])])
  run = jnp.cumsum(start.astype(jnp.int32)) - 1
  pixels = jnp.zeros((capacity,), jnp.int32).at[
      jnp.where(real, run, capacity)].add(1, mode='drop')
  slot = jnp.where(start, run, capacity)
  target = jnp.zeros((capacity,), jnp.int32).at[slot].set(first, mode='drop')
  pred = jnp.zeros((capacity,), jnp.int32).at[slot].set(second, mode='drop')
  return jnp.sum(start.astype(jnp.int32)), target, pred, pixels


def regions(lanes: batch_lib.Lanes, layers: batch_lib.Layers, thresholds,
            relative, overlap_capacity) -> Regions:
  """Region records and shooting-rule counts of one batch.

  Args:
    lanes: the batch's active tiles (`batch.gather`).
    layers: `batch.label_layers` of those lanes.
    thresholds: (T,) the thresholds `layers` were labelled at.
    relative: static; the prediction is prob / image max (GaNet's Pd/Fa).
    overlap_capacity: static; at least the batch's target pixels.

  Returns:
    `Regions`; rows follow the thresholds of `layers`.
  """
  mask, base = layers.mask, layers.base
  size = layers.selected.shape[1]
  score = lanes.probs / lanes.scale[:, None, None] if relative else lanes.probs
  targets, target_rank, target_count = _records(
      mask, lanes.owner, layers.selected[0], layers.parent[0],
      jax.tree.map(lambda a: a[0], layers.found))

  def predicted_layer(selected, parent, found):
    return _records(base, lanes.owner, selected, parent, found)

  predicted, pred_rank, predicted_count = jax.vmap(predicted_layer)(
      layers.selected[1:], layers.parent[1:],
      jax.tree.map(lambda a: a[1:], layers.found))

  # Target pixels that are predicted at the lowest threshold, and where they
  # sit in the predictions' pixel list.
  lanes_total = score.size
  index_of_lane = jnp.full((lanes_total,), -1, jnp.int32).at[
      jnp.where(base.ok, base.lane, lanes_total)].set(
          jnp.arange(size, dtype=jnp.int32), mode='drop')
  in_base = jnp.where(mask.ok, index_of_lane[mask.lane], -1)
  shared, _ = components_lib.compact(in_base >= 0, overlap_capacity)
  real = shared < size
  shared = jnp.where(real, shared, 0)
  at_base = jnp.maximum(in_base[shared], 0)
  owner_target = target_rank[layers.parent[0][shared]]

  def overlap_layer(selected, parent, rank):
    return _overlaps(owner_target, rank[parent[at_base]],
                     real & selected[at_base], overlap_capacity)

  overlap_count, overlap_target, overlap_pred, overlap_pixels = jax.vmap(
      overlap_layer)(layers.selected[1:], layers.parent[1:], pred_rank)

  # The shooting rule: a target's best score within its pixels' 3x3 boxes
  # decides its hit at every threshold at once.
  box_max = jnp.where(mask.ok, _box_max(lanes, score, mask.lane), -jnp.inf)
  target_max = jax.ops.segment_max(box_max, layers.parent[0], size)
  roots = layers.found.ok[0]
  hits = jnp.sum((roots[None] & (target_max[None] > thresholds[:, None])
                  ).astype(jnp.int32), axis=1)
  near = _near_mask(lanes).reshape(-1)[base.lane]
  fa = jnp.sum((layers.selected[1:] & ~near[None]).astype(jnp.int32), axis=1)
  return Regions(target_count, targets, predicted_count, predicted,
                 overlap_count, overlap_target, overlap_pred, overlap_pixels,
                 hits, fa)

