"""Connected components (8-connectivity) of sparse binary maps, in jax.numpy.

IRSTD maps are almost empty, so nothing here touches every pixel: the active
8x8 tiles of a batch are compacted into a list (`select_tiles`, with links to
their neighbouring tiles), the foreground pixels of those tiles into a shorter
list (`select_pixels`, with links to their 8-neighbours), and `label` finds the
components of that list by hooking (each link points the larger of its two
labels at the smaller) and pointer jumping in a `lax.while_loop`. Compaction
uses a prefix sum made of small triangular matmuls (`cumsum_counts`), which
XLA:CPU runs much faster than a long cumsum.

`components` gives each component's area, exact centroid and raster key, the
batch raster index of its first pixel: ordering components by that key is
scikit-image's label order, on which the Pd matching depends.
"""

from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

TILE = 8
LANES = TILE * TILE
_ROW = 64
_INT_MAX = np.iinfo(np.int32).max
# Centroid sums are split as 128 * high + low to stay inside int32.
_SPLIT = 128


def cumsum_counts(values: jnp.ndarray, bound: int = 1) -> jnp.ndarray:
  """Inclusive prefix sum of a 1-D int32 array with entries in [0, bound].

  XLA's CPU cumsum is slow on long arrays; a triangular float32 matmul per row
  of 64 is fast everywhere and exact while partial sums stay below 2**24
  (HIGHEST precision keeps GPUs from rounding through TF32).
  """
  n = values.shape[0]
  if n <= 4096 or bound * _ROW >= 2**24:
    return jnp.cumsum(values, dtype=jnp.int32)
  rows = -(-n // _ROW)
  padded = jnp.pad(values, (0, rows * _ROW - n)).reshape(rows, _ROW)
  upper = jnp.triu(jnp.ones((_ROW, _ROW), jnp.float32))
  within = jnp.dot(padded.astype(jnp.float32), upper,
                   precision=lax.Precision.HIGHEST).astype(jnp.int32)
  totals = within[:, -1]
  offsets = cumsum_counts(totals, bound * _ROW) - totals
  return (within + offsets[:, None]).reshape(-1)[:n]


def compact(flags: jnp.ndarray, capacity: int):
  """Indices of the True entries of 1-D `flags`, ascending, padded with n.

  Returns (indices (capacity,), count); entries beyond `capacity` are dropped
  and `count` still counts them.
  """
  n = flags.shape[0]
  position = cumsum_counts(flags.astype(jnp.int32))
  count = position[-1] if n else jnp.int32(0)
  slot = jnp.where(flags, position - 1, capacity)
  indices = jnp.full((capacity,), n, jnp.int32).at[slot].set(
      jnp.arange(n, dtype=jnp.int32), mode='drop')
  return indices, count


class Tiles(NamedTuple):
  """A compacted set of active tiles of a (B, H, W) batch.

  Only the capacity is static, so code on tiles compiles once per capacity.
  """
  ok: jnp.ndarray         # (cap,) bool: a real tile, not padding
  image: jnp.ndarray      # (cap,) int32 image index in the batch
  group: jnp.ndarray      # (cap,) int32 rank of the tile's image (matching)
  row: jnp.ndarray        # (cap,) int32 tile row
  col: jnp.ndarray        # (cap,) int32 tile column
  neighbors: jnp.ndarray  # (cap, 9) compact index of the 3x3 tile block, -1
  height: jnp.ndarray     # () int32 H
  width: jnp.ndarray      # () int32 W


def select_tiles(active: jnp.ndarray, capacity: int, shape,
                 order=None) -> Tiles:
  """Compacts the active tiles of a (B, H/8, W/8) boolean grid.

  Tiles are listed in raster order of the grid, or in the order of the
  permutation `order` of flat tile indices (`score` lists the tiles of its
  packed canvases image by image, so that each image's tiles are contiguous).
  """
  batch, tile_rows, tile_cols = active.shape
  total = active.size
  flat = active.reshape(-1)
  if order is not None:
    flat = flat[order]
  index, _ = compact(flat, capacity)
  ok = index < total
  index = jnp.where(ok, index, 0)
  if order is not None:
    index = order[index]
  image = index // (tile_rows * tile_cols)
  row = (index // tile_cols) % tile_rows
  col = index % tile_cols
  tile_map = jnp.full((total,), -1, jnp.int32).at[
      jnp.where(ok, index, total)].set(
          jnp.arange(capacity, dtype=jnp.int32), mode='drop')
  neighbors = []
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      r, c = row + dy, col + dx
      inside = ok & (r >= 0) & (r < tile_rows) & (c >= 0) & (c < tile_cols)
      flat = (image * tile_rows + jnp.clip(r, 0, tile_rows - 1)) * tile_cols
      flat = flat + jnp.clip(c, 0, tile_cols - 1)
      neighbors.append(jnp.where(inside, tile_map[flat], -1))
  group = jnp.zeros_like(image)  # Set by with_owners.
  _, height, width = shape
  del batch
  return Tiles(ok, image, group, row, col, jnp.stack(neighbors, axis=1),
               jnp.int32(height), jnp.int32(width))


def with_owners(tiles: Tiles, owner: jnp.ndarray) -> Tiles:
  """Assigns each tile to an image: no component crosses between images.

  Links to neighbouring tiles of another image are cut, and each tile's
  group becomes the dense rank of its image (tiles must come grouped by
  image), which keeps per-image work in arrays of the capacity's size.
  """
  starts = jnp.concatenate([jnp.ones((1,), bool), owner[1:] != owner[:-1]])
  neighbor_owner = owner[jnp.maximum(tiles.neighbors, 0)]
  neighbors = jnp.where(neighbor_owner == owner[:, None], tiles.neighbors, -1)
  return tiles._replace(group=cumsum_counts(starts.astype(jnp.int32)) - 1,
                        neighbors=neighbors)


def gather(tiles: Tiles, array: jnp.ndarray) -> jnp.ndarray:
  """The (cap, 8, 8) pixels of each selected tile of a (B, H, W) array."""
  offsets = jnp.arange(TILE, dtype=jnp.int32)
  rows = tiles.row[:, None, None] * TILE + offsets[None, :, None]
  cols = tiles.col[:, None, None] * TILE + offsets[None, None, :]
  return array[tiles.image[:, None, None], rows, cols]


def _backward_neighbor_tables():
  """For each lane and each of W, NW, N, NE: (tile block slot, lane)."""
  i = np.arange(TILE)[:, None] * np.ones((1, TILE), int)
  j = np.arange(TILE)[None, :] * np.ones((TILE, 1), int)
  tables = []
  for dy, dx in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
    ni, nj = i + dy, j + dx
    slot = (np.floor_divide(ni, TILE) + 1) * 3 + np.floor_divide(nj, TILE) + 1
    lane = (ni % TILE) * TILE + nj % TILE
    tables.append((slot.reshape(-1).astype(np.int32),
                   lane.reshape(-1).astype(np.int32)))
  return tables


_TABLES = _backward_neighbor_tables()


class Pixels(NamedTuple):
  """A compacted list of foreground pixels of the selected tiles, with the
  links to their 8-neighbours in the list and their coordinates."""
  ok: jnp.ndarray     # (F,) bool
  count: jnp.ndarray  # () int32 foreground pixels (may exceed F: dropped)
  lane: jnp.ndarray   # (F,) int32 lane = tile * 64 + row * 8 + col
  other: jnp.ndarray  # (4F,) int32 list index of the W, NW, N, NE
                      # neighbours (the pixel itself when there is none)
  y: jnp.ndarray      # (F,) int32 row in the batch entry
  x: jnp.ndarray      # (F,) int32 column
  key: jnp.ndarray    # (F,) int32 raster index in the batch
  group: jnp.ndarray  # (F,) int32 Tiles.group of the pixel's tile


def select_pixels(tiles: Tiles, foreground: jnp.ndarray,
                  capacity: int) -> Pixels:
  """Lists the foreground pixels (cap, 8, 8) of the tiles and links them."""
  lanes = foreground.size
  lane, count = compact(foreground.reshape(-1), capacity)
  ok = lane < lanes
  ids = jnp.arange(capacity, dtype=jnp.int32)
  index_of_lane = jnp.full((lanes + 1,), -1, jnp.int32).at[
      jnp.where(ok, lane, lanes + 1)].set(ids, mode='drop')
  lane = jnp.minimum(lane, lanes - 1)
  tile, local = lane // LANES, lane % LANES
  others = []
  for slot, neighbor_lane in _TABLES:
    neighbor_tile = tiles.neighbors[tile, jnp.asarray(slot)[local]]
    linked = ok & (neighbor_tile >= 0)
    other_lane = neighbor_tile * LANES + jnp.asarray(neighbor_lane)[local]
    other = index_of_lane[jnp.where(linked, other_lane, lanes)]
    others.append(jnp.where(other >= 0, other, ids))
  y = tiles.row[tile] * TILE + local // TILE
  x = tiles.col[tile] * TILE + local % TILE
  key = (tiles.image[tile] * tiles.height + y) * tiles.width + x
  return Pixels(ok, count, lane, jnp.concatenate(others), y, x, key,
                tiles.group[tile])


def label(pixels: Pixels, ok: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """8-connected components of the listed pixels (or of those with `ok`).

  Returns (F,) int32: for each pixel, the list index of its component's
  representative, the component's first pixel in list order.
  """
  ok = pixels.ok if ok is None else ok
  size = ok.shape[0]
  ids = jnp.arange(size, dtype=jnp.int32)
  source = jnp.tile(ids, 4)
  other = jnp.where(ok[source] & ok[pixels.other], pixels.other, source)

  def body(state):
    parent, _ = state
    a, b = parent[source], parent[other]
    hooked = parent.at[jnp.maximum(a, b)].min(jnp.minimum(a, b))
    jumped = hooked[hooked]
    return jumped, jnp.any(jumped != parent)

  parent, _ = lax.while_loop(lambda s: s[1], body, (ids, jnp.array(True)))
  return parent


class Components(NamedTuple):
  """Per-component records at the representative's list index.

  Entries whose `ok` is False are not components (other pixels, padding).
  """
  ok: jnp.ndarray     # (F,) bool
  count: jnp.ndarray  # () int32 number of components
  image: jnp.ndarray  # (F,) int32 the image's rank (Tiles.group)
  key: jnp.ndarray    # (F,) int32 raster index of the first pixel in batch
  area: jnp.ndarray   # (F,) int32
  row: jnp.ndarray    # (F,) int32 floor of the centroid's row
  row_frac: jnp.ndarray  # (F,) float32 fractional part of the row
  col: jnp.ndarray
  col_frac: jnp.ndarray


def _exact_mean(high, low, area):
  """floor and fraction of (128 * high + low) / area without overflow."""
  area = jnp.maximum(area, 1)
  q_high, r_high = high // area, high % area
  rest = _SPLIT * r_high + low
  whole = _SPLIT * q_high + rest // area
  return whole, (rest % area).astype(jnp.float32) / area.astype(jnp.float32)


def components(pixels: Pixels, parent: jnp.ndarray,
               ok: Optional[jnp.ndarray] = None) -> Components:
  """Area, centroid and raster key of each component found by `label`."""
  ok = pixels.ok if ok is None else ok
  size = ok.shape[0]

  def total(values):
    return jax.ops.segment_sum(jnp.where(ok, values, 0), parent, size)

  y, x = pixels.y, pixels.x
  area = total(jnp.ones_like(y))
  first = jax.ops.segment_min(jnp.where(ok, pixels.key, _INT_MAX), parent,
                              size)
  row, row_frac = _exact_mean(total(y // _SPLIT), total(y % _SPLIT), area)
  col, col_frac = _exact_mean(total(x // _SPLIT), total(x % _SPLIT), area)
  is_root = ok & (parent == jnp.arange(size, dtype=jnp.int32))
  count = jnp.sum(is_root.astype(jnp.int32))
  return Components(is_root, count, pixels.group, first, area, row, row_frac,
                    col, col_frac)


def compact_components(found: Components) -> Components:
  """Moves the records to the front, in list order (so grouped by image)."""
  size = found.ok.shape[0]
  index, _ = compact(found.ok, size)
  valid = index < size
  index = jnp.where(valid, index, 0)
  return Components(valid, found.count, *(r[index] for r in found[2:]))
