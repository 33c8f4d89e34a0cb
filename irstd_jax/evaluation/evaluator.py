"""Scores a model on a dataset split: the one way the toolbox evaluates a model.

`Evaluator(config, source, mesh, model).run(model_state)` streams the split
through a jitted step that adds each batch to the metrics' sufficient
statistics on the devices (nothing is gathered per batch), then computes the
metrics on the host. The training loop, eval mode and anything else that
scores a model call it, as big_vision's trainer calls its evaluators.

The jitted functions live at module level with the graph definition static,
so every Evaluator of the same model in one process (a resumed run, eval after
train, tests, notebooks) shares one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import auto as tqdm

from irstd_jax import input_pipeline
from irstd_jax import metrics
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax.evaluation import report


def predict_probs(model: nnx.Module, images: jax.Array) -> jax.Array:
  """Target probabilities (B, H, W) of a model's logits (B, H, W, 1)."""
  return jax.nn.sigmoid(model(images))[..., 0]


def predict_on_canvas(model_state: Any, images: jax.Array, *, graphdef: Any,
                      canvas: tuple[int, int]) -> jax.Array:
  """Probabilities (B, Hc, Wc): the model at the images' own shape, zero beyond.

  One compilation per image shape; the metrics then see a few canvas shapes
  only (`input_pipeline.METRIC_CANVASES`).
  """
  probs = predict_probs(nnx.merge(graphdef, model_state), images)
  height, width = probs.shape[1:]
  return jnp.pad(probs, ((0, 0), (0, canvas[0] - height), (0, canvas[1] - width)))


def update_stats(stats: metrics.MetricStats, probs: jax.Array, mask: jax.Array,
                 valid: jax.Array, *, threshold: float, pd_fa_relative: bool,
                 mesh: jax.sharding.Mesh, with_probs: bool = False) -> Any:
  """Adds a batch of probabilities to the metrics' sufficient statistics.

  Args:
    stats: from `metrics.init`, replicated; donated.
    probs, mask, valid: (B, Hc, Wc), sharded; `valid` is False beyond each
      image, so the canvas's padding counts nowhere.
    threshold: probability threshold (strict >).
    pd_fa_relative: GaNet code's Pd/Fa, thresholding each map divided by its
      maximum (IoU stays absolute); False is BasicIRSTD's absolute threshold.
    mesh: the device mesh.
    with_probs: also return the probabilities, replicated, for the host-side
      metric variants (`metrics.variants`).

  Returns:
    The updated statistics, replicated (and the probabilities).
  """
  stats = steps.replicate(metrics.update(stats, probs, mask, valid, threshold=threshold,
                                         pd_fa_relative=pd_fa_relative), mesh)
  return (stats, steps.replicate(probs, mesh)) if with_probs else stats


def predict(model_state: Any, images: jax.Array, *, graphdef: Any,
            mesh: jax.sharding.Mesh) -> jax.Array:
  """Probabilities (B, H, W), gathered on every host: only for a few pictures."""
  return steps.replicate(predict_probs(nnx.merge(graphdef, model_state), images), mesh)


def eval_graphdef(model: nnx.Module) -> Any:
  """The graph definition of `model` in eval mode (running batch-norm statistics).

  It has the same state structure as the train-mode model, so the training
  state's model part evaluates as it is.
  """
  model.eval()
  graphdef = nnx.graphdef(model)
  model.train()
  return graphdef


def _add_variants(variant_stats: metrics.variants.VariantStats, probs: jax.Array,
                  masks: np.ndarray, valid: np.ndarray) -> metrics.variants.VariantStats:
  """Adds a batch to the variants on this host's first device holding it.

  `probs` is replicated, so every host computes the same statistics from its
  own full copy (no cross-host merge needed).
  """
  local = probs.addressable_data(0)
  device = next(iter(local.devices()))
  return metrics.variants.update(variant_stats, local, jax.device_put(masks, device),
                                 jax.device_put(valid, device))


@dataclasses.dataclass
class Result:
  """What `Evaluator.run` returns.

  For a split made of parts (SIRST3), `metrics` are over all its images and
  `parts` holds each part's; `scalars` has both, a part's as '<part>/miou'.
  """
  metrics: dict[str, Any]          # `metrics.compute`'s dict.
  examples: list[report.Example]   # The first images with their predictions.
  parts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  @property
  def scalars(self) -> dict[str, float]:
    return {**report.scalar_metrics(self.metrics),
            **{f'{part}/{key}': value for part, result in self.parts.items()
               for key, value in report.scalar_metrics(result).items()}}


class Evaluator:
  """Scores a model on one split of the config's dataset.

  Args:
    config: the run's config (`config.eval` and `config.input` are read).
    source: the split's examples (`datasets.load`).
    mesh: the device mesh; the model state is replicated, batches are sharded
      on its 'data' axis and padded with invalid entries to the device count.
    model: the model (any mode), for its graph definition.
  """

  def __init__(self, config: ml_collections.ConfigDict, source: Any,
               mesh: jax.sharding.Mesh, model: nnx.Module):
    self.config = config
    self.source = source
    self.mesh = mesh
    graphdef = eval_graphdef(model)
    platform = mesh.devices.flat[0].platform
    self._predict_on_canvas = functools.partial(
        steps.jitted(predict_on_canvas, platform, static_argnames=('graphdef', 'canvas')),
        graphdef=graphdef)
    self._update = functools.partial(
        steps.jitted(update_stats, platform, donate_argnums=(0,),
                     static_argnames=('threshold', 'pd_fa_relative', 'mesh', 'with_probs')),
        threshold=float(config.eval.threshold),
        pd_fa_relative=bool(config.eval.pd_fa_relative), mesh=mesh)
    self._predict = functools.partial(
        steps.jitted(predict, platform, static_argnames=('graphdef', 'mesh')),
        graphdef=graphdef, mesh=mesh)

  def batches(self, source: Any = None) -> Iterator[dict[str, Any]]:
    """The evaluation batches of `source` (default: the split), in full on every host."""
    ev, inp = self.config.eval, self.config.input
    return input_pipeline.eval_batches(
        self.source if source is None else source, batch_size=ev.batch_size,
        resolution=ev.resolution, pad_multiple=ev.pad_multiple, max_shapes=ev.max_shapes,
        num_channels=inp.num_channels, mean_std=(inp.mean, inp.std),
        pad_value=input_pipeline.pad_value_for(ev.get('pad', 'zero'), (inp.mean, inp.std)))

  def _padded(self, batch: dict[str, Any]) -> dict[str, Any]:
    return sharding.pad_batch({k: batch[k] for k in ('image', 'mask', 'valid')},
                              self.mesh.size)

  def _on_devices(self, arrays: dict[str, Any]) -> dict[str, jax.Array]:
    data = sharding.batch_sharded(self.mesh)
    return {k: sharding.global_array(v, data) for k, v in arrays.items()}

  def _on_canvas(self, arrays: dict[str, Any], canvas: tuple[int, int]) -> dict[str, Any]:
    """`mask` and `valid` zero-padded to the canvas (False: counts nowhere)."""
    out = dict(arrays)
    for key in ('mask', 'valid'):
      height, width = arrays[key].shape[1:]
      out[key] = np.pad(arrays[key], ((0, 0), (0, canvas[0] - height), (0, canvas[1] - width)))
    return out

  def _add_examples(self, examples, limit, batch, device_images, model_state, probs=None):
    if probs is None:
      probs = self._predict(model_state, device_images)
    probs = sharding.to_host(probs)
    height, width = batch['valid'].shape[1:]
    for i, image_id in enumerate(batch['id']):
      if len(examples) < limit and np.any(batch['valid'][i]):
        examples.append(report.Example.crop(image_id, batch, i, probs[i, :height, :width]))

  def run(self, model_state: Any, *, num_examples: int = 0,
          pd_fa_curve: bool = False, show_progress: bool = False,
          variants: bool | None = None) -> Result:
    """All metrics of the model on the split.

    Args:
      model_state: the model part of the training state (pure dict).
      num_examples: how many images to return with their predictions.
      pd_fa_curve: also Pd/Fa (and the variants) at 5 more thresholds (5 more
        connected-component passes per batch; off during training).
      show_progress: a progress bar over the split's images (on the console).
      variants: also the target-level variants (`metrics.variants`: shooting
        rule, OPDC, hIoU); default `config.eval.variants`. Each batch's
        probabilities are then labelled once more on one device and matched
        on the host, while the devices run the next batch.

    A split made of parts (`source.parts`, SIRST3) is scored part by part;
    the parts' statistics summed give the metrics over all its images.
    """
    ev = self.config.eval
    if variants is None:
      variants = bool(ev.get('variants', True))
    curve = None if pd_fa_curve else ()
    examples: list[report.Example] = []
    parts = getattr(self.source, 'parts', None) or {'': self.source}
    by_part, total = {}, None
    with tqdm.tqdm(total=len(self.source), unit='image', leave=False, dynamic_ncols=True,
                   desc=f'evaluating {ev.split}',
                   disable=not show_progress) as progress:
      for name, part in parts.items():
        stats, variant_stats = self._accumulate(
            model_state, part, curve, variants, examples, num_examples,
            progress if show_progress else None)
        by_part[name] = metrics.compute(stats, variant_stats)
        total = (stats, variant_stats) if total is None else (
            metrics.merge(total[0], stats),
            None if variant_stats is None else metrics.variants.merge(total[1], variant_stats))
    if '' in by_part:
      return Result(by_part[''], examples)
    return Result(metrics.compute(*total), examples, parts=by_part)

  def _accumulate(self, model_state, source, curve, variants, examples, num_examples,
                  progress):
    """The statistics (and variant statistics) of `source`, on the host."""
    ev = self.config.eval
    stats = metrics.init(pd_fa_thresholds=curve)
    stats = jax.device_put(stats, sharding.replicated(self.mesh))
    variant_stats = metrics.variants.init(
        float(ev.threshold), curve, bool(ev.pd_fa_relative)) if variants else None
    pending = None  # The previous batch's (probs, masks, valid) for the variants.
    for batch in self.batches(source):
      canvas = tuple(batch['canvas'])
      arrays = self._on_canvas(self._padded(batch), canvas)
      device_batch = self._on_devices(arrays)
      probs = self._predict_on_canvas(model_state, device_batch['image'], canvas=canvas)
      if variants:
        stats, replicated = self._update(stats, probs, device_batch['mask'],
                                         device_batch['valid'], with_probs=True)
        if pending is not None:
          variant_stats = _add_variants(variant_stats, *pending)
        pending = (replicated, arrays['mask'], arrays['valid'])
      else:
        stats = self._update(stats, probs, device_batch['mask'], device_batch['valid'])
      if len(examples) < num_examples:
        self._add_examples(examples, num_examples, batch, None, model_state, probs=probs)
      if progress is not None:  # Counts images as they finish, not as they are queued.
        jax.block_until_ready(stats)
        progress.update(sum(1 for i in batch['id'] if i))
    if pending is not None:
      variant_stats = _add_variants(variant_stats, *pending)
    return sharding.to_host(stats), variant_stats

  def predict(self, model_state: Any, limit: int) -> list[report.Example]:
    """Predictions for the first `limit` images (no metrics; stops early)."""
    examples: list[report.Example] = []
    parts = getattr(self.source, 'parts', None) or {'': self.source}
    for batch in (b for part in parts.values() for b in self.batches(part)):
      if len(examples) >= limit:
        break
      self._add_examples(examples, limit, batch,
                         self._on_devices(self._padded(batch))['image'],
                         model_state)
    return examples
