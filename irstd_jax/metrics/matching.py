"""BasicIRSTD's greedy Pd matching, vectorized.

The reference walks the targets (mask components) in label order; each takes
the first still-unmatched predicted component, in label order, whose centroid
lies closer than 3 px, and removes it. Here that sequential rule is computed
in rounds: every predicted component picks the earliest uncommitted target
that wants it, every target proposes its earliest available candidate, and a
pair is committed when both choices agree. The earliest uncommitted target of
an image always commits, and a committed pair is one the sequential walk makes
too (no earlier target can still reach that component), so the result is the
reference's. Usually a single round suffices. A prediction only looks at the
targets of its own image whose centroid row is within 3 rows of its own
(targets sorted by image and row, found by binary search).
"""

from typing import NamedTuple

from jax import lax
import jax.numpy as jnp
import numpy as np

from irstd_jax.metrics import components as components_lib

_INT_MAX = np.iinfo(np.int32).max
# The reference's rule: Euclidean distance between centroids < 3 px.
MAX_DISTANCE = 3.0


def _band(rows, low, high, row):
  """Per lane, [first, last) of sorted `rows[low:high]` within row +- 3.

  Two vectorized binary searches sharing one loop.
  """
  size = rows.shape[0]

  def search(bounds, value, strict):
    low, high = bounds
    middle = (low + high) // 2
    probe = rows[jnp.minimum(middle, size - 1)]
    right = (middle < high) & ((probe <= value) if strict else (probe < value))
    return jnp.where(right, middle + 1, low), jnp.where(right, high, middle)

  def step(_, state):
    return (search(state[0], row - 3, False), search(state[1], row + 3, True))

  (first, _), (last, _) = lax.fori_loop(
      0, max(size, 1).bit_length() + 1, step, ((low, high), (low, high)))
  return first, last


class Targets(NamedTuple):
  """Targets sorted by image and by the floor of their centroid's row."""
  components: components_lib.Components
  start: jnp.ndarray  # (num_images,) index of each image's first target
  count: jnp.ndarray  # (num_images,) targets of each image


def sort_targets(targets: components_lib.Components,
                 num_images: int) -> Targets:
  """Prepares the targets once for matching at several thresholds."""
  size = targets.ok.shape[0]
  image_key = jnp.where(targets.ok, targets.image, _INT_MAX)
  _, _, order = lax.sort(
      (image_key, targets.row, jnp.arange(size, dtype=jnp.int32)), num_keys=2)
  targets = components_lib.Components(
      targets.ok[order], targets.count, *(f[order] for f in targets[2:]))
  count = jnp.zeros((num_images,), jnp.int32).at[targets.image].add(
      targets.ok.astype(jnp.int32))
  return Targets(targets, jnp.cumsum(count) - count, count)


def greedy_match(predicted: components_lib.Components, sorted_targets: Targets):
  """Returns (number of matched targets, pixels of matched predictions)."""
  targets = sorted_targets.components
  num_targets = targets.ok.shape[0]
  # A prediction only looks at the targets of its image within 3 rows.
  group_start = sorted_targets.start[predicted.image]
  first, last = _band(targets.row, group_start,
                      group_start + sorted_targets.count[predicted.image],
                      predicted.row)
  available_targets = jnp.where(predicted.ok, last - first, 0)
  steps = jnp.max(available_targets)

  def candidates(j, available, committed):
    target = jnp.minimum(first + j, num_targets - 1)
    dy = (predicted.row - targets.row[target]).astype(jnp.float32) + (
        predicted.row_frac - targets.row_frac[target])
    dx = (predicted.col - targets.col[target]).astype(jnp.float32) + (
        predicted.col_frac - targets.col_frac[target])
    near = dy * dy + dx * dx < MAX_DISTANCE * MAX_DISTANCE
    ok = (predicted.ok & available & (j < available_targets) &
          ~committed[target] & near)
    return ok, target

  def one_round(state):
    available, committed, matched = state

    def choose(j, carry):
      wanted_by, proposal = carry
      ok, target = candidates(j, available, committed)
      wanted_by = jnp.minimum(wanted_by,
                              jnp.where(ok, targets.key[target], _INT_MAX))
      proposal = proposal.at[jnp.where(ok, target, num_targets)].min(
          predicted.key, mode='drop')
      return wanted_by, proposal

    wanted_by, proposal = lax.fori_loop(
        0, steps, choose,
        (jnp.full(predicted.ok.shape, _INT_MAX, jnp.int32),
         jnp.full((num_targets,), _INT_MAX, jnp.int32)))

    def commit(j, carry):
      taken, won = carry
      ok, target = candidates(j, available, committed)
      agree = (ok & (wanted_by == targets.key[target]) &
               (proposal[target] == predicted.key))
      won = won.at[jnp.where(agree, target, num_targets)].set(
          True, mode='drop')
      return taken | agree, won

    taken, won = lax.fori_loop(
        0, steps, commit,
        (jnp.zeros(predicted.ok.shape, bool), jnp.zeros((num_targets,), bool)))
    # A target without any candidate left can never match.
    committed = committed | won | (proposal == _INT_MAX)
    return available & ~taken, committed, matched | won

  state = (predicted.ok, ~targets.ok, jnp.zeros((num_targets,), bool))
  available, _, matched = lax.while_loop(
      lambda s: ~jnp.all(s[1]), one_round, state)
  matched_pixels = jnp.sum(
      jnp.where(predicted.ok & ~available, predicted.area, 0))
  return jnp.sum(matched.astype(jnp.int32)), matched_pixels
