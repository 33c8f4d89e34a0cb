"""Precise batch norm: running statistics re-estimated at the test's image size.

A model trained on small crops keeps batch-norm running averages of crop
statistics, but the test feeds whole images at native size, padded, whose
feature statistics differ. Trained with the `:cpu` recipe (128 crops), GaNet
flooded the test with false alarms (mIoU 34.39, Fa 606e-6 on SIRST-v1) where the same
weights with statistics re-estimated over the training images at native size
scored 58.17 (Fa 103e-6), and statistics re-estimated over crops did not
help (31.22; docs/reproducing.md#cpu-budget-runs). Wu & Johnson,
"Rethinking 'Batch' in BatchNorm" (2021), call this train-test inconsistency
and the remedy precise BN.

`recalibrate(...)` runs the model in train mode over training images prepared
as the test images are (`training_batches`: resolution, padding), each
padded alone and passed alone, and replaces every batch norm's mean and
variance with the pixel-weighted population statistics of those passes. The weights are
untouched. Train mode normalises with batch statistics, so training does not
read what this replaces; the training loop applies it before each evaluation
(`eval.precise_bn_images`), and the checkpoint saved there holds the new
statistics (and says so in its metadata), so eval mode, inference and a
resumed run see what was scored. Eval mode applies it to a checkpoint saved
without it when the config asks.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm

from irstd_jax import input_pipeline
from irstd_jax import sharding


def training_batches(config: Any, source: Any, num_images: int = -1) -> Any:
  """`source`'s images one by one, prepared as the test's, each padded alone.

  `num_images` N >= 0: N images spread evenly over the split (not its first
  N), so that a subset keeps the split's mix of image sizes; -1: all.
  """
  ev, inp = config.eval, config.input
  if 0 <= num_images < len(source):
    picked = np.unique(np.linspace(0, len(source) - 1, num_images).round().astype(int))
    source = [source[int(i)] for i in picked]
  return input_pipeline.eval_batches(
      source, batch_size=1, resolution=ev.resolution, pad_multiple=ev.pad_multiple,
      max_shapes=0, num_channels=inp.num_channels, mean_std=(inp.mean, inp.std),
      pad_value=input_pipeline.pad_value_for(ev.get('pad', 'zero'), (inp.mean, inp.std)))


def calibration_graphdef(model: nnx.Module) -> Any:
  """`model`'s graph in train mode with every batch norm's momentum at 0.

  A train-mode pass of it leaves each batch norm's running statistics equal
  to that pass's statistics (the biased variance, so that pooling is exact).
  """
  probe = nnx.clone(model)
  probe.train()
  found = False
  for _, module in nnx.iter_modules(probe):
    if isinstance(module, nnx.BatchNorm):
      module.momentum = 0.0
      module.unbiased_running_var = False
      found = True
  if not found:
    raise ValueError(f'{type(model).__name__} has no batch norm to recalibrate: '
                     'set eval.precise_bn_images=0.')
  return nnx.graphdef(probe)


@functools.partial(jax.jit, static_argnames=('graphdef',))
def batch_statistics(weights: Any, images: jax.Array, *, graphdef: Any) -> Any:
  """Every batch norm's statistics of one train-mode pass over `images`."""
  model = nnx.merge(graphdef, weights)
  model(images)
  return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def population(statistics: Iterable[tuple[Any, float]]) -> Any:
  """Pooled mean and variance of (batch statistics, pixel count) pairs, float64.

  Each batch norm's pooled variance is E[var + mean^2] - E[mean]^2 with the
  batches weighted by their pixel count (every layer's pixel count is
  proportional to the input's: native images are padded to a multiple of the
  network's total stride).
  """
  total, sums = 0.0, None
  for stats, pixels in statistics:
    moments = _moments(stats, pixels)
    sums = moments if sums is None else jax.tree.map(np.add, sums, moments)
    total += pixels
  if sums is None:
    raise ValueError('precise BN needs at least one training image.')
  return _from_moments(jax.tree.map(lambda s: s / total, sums))


def _moments(stats: Any, pixels: float) -> Any:
  """Per batch norm {'mean', 'var'} -> pixels * {'mean': E[x], 'var': E[x^2]}, float64."""
  if isinstance(stats, dict) and set(stats) == {'mean', 'var'}:
    mean, var = (np.asarray(stats[k], np.float64) for k in ('mean', 'var'))
    return {'mean': pixels * mean, 'var': pixels * (var + np.square(mean))}
  return {k: _moments(v, pixels) for k, v in stats.items()}


def _from_moments(moments: Any) -> Any:
  if isinstance(moments, dict) and set(moments) == {'mean', 'var'}:
    mean = moments['mean']
    return {'mean': mean, 'var': np.maximum(moments['var'] - np.square(mean), 0.0)}
  return {k: _from_moments(v) for k, v in moments.items()}


def _replace(weights: Any, new: Any) -> Any:
  """`weights` with the leaves of `new` (a sub-tree of the same nesting)."""
  if not isinstance(new, dict):
    return jnp.asarray(new, jnp.asarray(weights).dtype)
  out = dict(weights)
  for key, value in new.items():
    out[key] = _replace(weights[key], value)
  return out


def recalibrate(weights: Any, batches: Iterable[dict[str, Any]], *, graphdef: Any,
                mesh: jax.sharding.Mesh, num_images: int = -1,
                show_progress: bool = False) -> Any:
  """`weights` (a model's pure dict) with precise batch-norm statistics.

  Args:
    weights: the model part of a training state (`steps.eval_weights`).
    batches: `training_batches(config, train_source, num_images)` (entries
      with id '' are skipped: filler).
    graphdef: `calibration_graphdef(model)`.
    mesh: the statistics are computed with the weights and each image
      replicated on it (one image at a time: one compilation per image shape).
    num_images: at most N images of `batches` (the first N); -1: all.
    show_progress: a progress bar over the images (on the console).
  """
  replicated = sharding.replicated(mesh)

  def passes(progress):
    seen = 0
    for batch in batches:
      for slot, image_id in enumerate(batch['id']):
        if not image_id:
          continue
        if 0 <= num_images <= seen:
          return
        image = jax.device_put(batch['image'][slot:slot + 1], replicated)
        yield (batch_statistics(weights, image, graphdef=graphdef),
               float(image.shape[1] * image.shape[2]))
        seen += 1
        progress.update()

  with tqdm.tqdm(total=None if num_images < 0 else num_images, unit='image', leave=False,
                 dynamic_ncols=True, desc='precise BN', disable=not show_progress) as progress:
    stats = population(passes(progress))
  return jax.device_put(_replace(weights, stats), replicated)
