"""Training checkpoints: the latest N plus the best, with orbax.

A checkpoint holds two items:
- `state`: the model and optimizer state as pure dicts of arrays (so the files
  do not depend on NNX's Variable classes; PRNG keys are stored as raw key data);
- `meta`: JSON with the step, epoch, input-pipeline position, the best
  evaluation so far and a description of the model, which is checked before a
  workdir is resumed with another config.

orbax's plain `max_to_keep` + `best_fn` deletes the latest checkpoint whenever
it is not among the best, which breaks resuming; a preservation policy that
keeps the union of `LatestN` and `BestN` does not (see
research/ecosystem.md section 3).
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class _NoMetricsFilter(std_logging.Filter):
  """Hides orbax's warning for checkpoints saved without an evaluation.

  Saving between evaluations is intended: such checkpoints are kept only as
  the latest ones, never as the best.
  """

  def filter(self, record):
    return 'did not provide metrics' not in record.getMessage()


std_logging.getLogger('absl').addFilter(_NoMetricsFilter())


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
  """Replaces typed PRNG keys by their uint32 key data (orbax cannot store keys)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_savable(tree: Any, like: Any) -> Any:
  """Inverse of `to_savable`, using `like` to know which leaves were keys."""
  def restore_leaf(x, ref):
    if _is_key(ref):
      return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
    return x
  return jax.tree.map(restore_leaf, tree, like)


class Checkpoints:
  """The checkpoints of one training run, in `directory`.

  Every process of a multi-host run creates one and calls `save`/`restore`
  with the same arguments; orbax coordinates the writes.
  """

  def __init__(self, directory: str, *, keep: int = 2,
               best_metric: str = 'miou', best_mode: str = 'max'):
    if keep < 1:
      raise ValueError(f'checkpoint.keep must be >= 1 (it keeps the latest '
                       f'checkpoints for resuming), got {keep}.')
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    if '://' not in directory:  # orbax needs absolute local paths (gs:// is fine).
      directory = os.path.abspath(directory)
    self.best_metric = best_metric
    get_metric = lambda metrics: metrics[best_metric]
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        # reverse=False keeps the highest values, reverse=True the lowest.
        checkpoint_managers.BestN(get_metric_fn=get_metric,
                                  reverse=best_mode == 'min', n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=get_metric, best_mode=best_mode, preservation_policy=policy,
        cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(
        directory, options=options, item_names=('state', 'meta'))
    self.directory = directory

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best evaluation metric, None if none was evaluated."""
    return self._manager.best_step()

  def resolve(self, which: str | int) -> int:
    """'latest', 'best' or a step number, as a step that exists."""
    if isinstance(which, str) and which.isdigit():
      which = int(which)
    if which == 'latest':
      step = self.latest_step()
    elif which == 'best':
      step = self.best_step()
    elif isinstance(which, int):
      step = which if which in self.all_steps() else None
    else:
      raise ValueError(f"checkpoint must be 'latest', 'best' or a step number, "
                       f'got {which!r}.')
    if step is None:
      raise FileNotFoundError(
          f'No {which!r} checkpoint in {self.directory} (steps there: '
          f'{self.all_steps()}). Train first, or point --workdir at a '
          'training run.')
    return step

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves asynchronously; `metrics` (from an evaluation) rank the best one."""
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(to_savable(state)),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics)

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) of `step` onto the shapes and shardings of `like`.

    Args:
      step: a step in `all_steps()`.
      like: a pytree of arrays (the freshly initialised state); restored
        arrays take its shapes, dtypes and, for jax arrays, shardings.

    Returns:
      The restored state, with the structure of `like`, and the meta dict.
    """
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=getattr(x, 'sharding', None)),
        to_savable(like))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return from_savable(restored.state, like), restored.meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
