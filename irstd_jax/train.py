"""Training and evaluation: a library of small functions and the loop.

`train_and_evaluate(config, workdir)` trains a model with the config's recipe,
evaluates it every few epochs on the test split, keeps the latest and the best
checkpoints and resumes from `workdir` after an interruption.
`evaluate_checkpoint(config, workdir)` scores a saved checkpoint on a split.

Parallelism: one 1-D device mesh with axis 'data'. The train step is
`jax.jit`-compiled with the batch sharded over 'data' and the state replicated;
XLA inserts the all-reduces, so batch-norm statistics and gradients are over
the global batch and 1 device and N devices train the same model (up to
reduction order). Hosts each read their own slice of every batch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any, Iterator

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np
import optax

from irstd_jax import checkpointing
from irstd_jax import config_lib
from irstd_jax import reporting
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax import summary
from irstd_jax import visualization



# ---------------------------------------------------------------------------
# Model, optimizer, steps.

def create_model(config: ml_collections.ConfigDict, *, seed: int | None = None) -> nnx.Module:
  """Builds `config.model.name` with `config.model.options`, in train mode.

  A name of the form 'package.module:Class' builds that class instead of a
  registered model, so that user models train with the same loop. A
  `config.model.dtype` other than float32 is passed as the `dtype` option.
  """
  from irstd_jax import models  # pylint: disable=g-import-not-at-top
  name = config.model.name
  options = model_options(config)
  dtype = config.model.get('dtype', 'float32')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.model.dtype={dtype!r}: use 'float32' (default) or "
                     "'bfloat16' (mixed precision for GPUs and TPUs).")
  if dtype != 'float32':
    options['dtype'] = dtype
  rngs = nnx.Rngs(config.seed if seed is None else seed)
  if ':' in name:
    import importlib  # pylint: disable=g-import-not-at-top
    module_name, cls_name = name.split(':')
    model = getattr(importlib.import_module(module_name), cls_name)(**options, rngs=rngs)
  else:
    model = models.build(name, rngs=rngs, **options)
  model.train()
  return model


def training_size(config: ml_collections.ConfigDict) -> int:
  """The side of the training images: the crop, or the recipe's resize."""
  from irstd_jax import recipes  # pylint: disable=g-import-not-at-top
  return recipes.train_size(config.input.recipe, config.dataset.name,
                            image_size=config.input.image_size,
                            crop_size=config.input.crop_size)


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.model.options`, with the value 'train_size' replaced by `training_size`.

  GaNet's `img_size` must follow the training size, which command-line
  overrides of the input may change after the config file ran.
  """
  options = _plain(config.model.get('options', {}))
  return {k: training_size(config) if v == 'train_size' else v for k, v in options.items()}


def count_params(model: nnx.Module) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def model_description(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a checkpoint must match to be restored into this config's model."""
  return json.loads(json.dumps({
      'name': config.model.name,
      'options': model_options(config),
      'num_channels': config.input.num_channels,
  }))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """Piecewise-constant learning rate with drops at epoch boundaries.

  The learning rate is multiplied by `schedule.decay_factor` from the first
  step of each epoch in `schedule.decay_epochs` (0-based epoch counts, as
  PyTorch's MultiStepLR stepped once per epoch).
  """
  scales: dict[int, float] = {}
  for epoch in config.schedule.decay_epochs:
    if 0 < epoch < config.schedule.num_epochs:
      step = int(epoch) * steps_per_epoch
      scales[step] = scales.get(step, 1.0) * config.schedule.decay_factor
  return _piecewise_constant(float(config.optimizer.learning_rate),
                             tuple(sorted(scales.items())))


# Schedules and transformations are cached by value: the optimizer's graph
# definition holds them, and equal graph definitions let a second run in the
# same process (a resumed run, eval after train, tests) reuse the compiled step.
@functools.lru_cache(maxsize=None)
def _piecewise_constant(init_value: float, boundaries_and_scales: tuple) -> optax.Schedule:
  return optax.piecewise_constant_schedule(init_value, dict(boundaries_and_scales))


@functools.lru_cache(maxsize=None)
def _transformation(name: str, learning_rate_fn: optax.Schedule, b1: float, b2: float,
                    eps: float, weight_decay: float, momentum: float
                    ) -> optax.GradientTransformation:
  if name == 'adam' and not weight_decay:
    return optax.adam(learning_rate_fn, b1=b1, b2=b2, eps=eps)
  if name in ('adam', 'adamw'):
    return optax.adamw(learning_rate_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if name == 'sgd':
    return optax.sgd(learning_rate_fn, momentum=momentum)
  raise ValueError(f"optimizer.name must be 'adam', 'adamw' or 'sgd', got {name!r}.")


def create_optimizer(model: nnx.Module, config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> nnx.Optimizer:
  """Adam (the papers' choice), AdamW or SGD over the model's parameters."""
  opt = config.optimizer
  tx = _transformation(opt.name, learning_rate_fn, float(opt.b1), float(opt.b2),
                       float(opt.eps), float(opt.weight_decay),
                       float(opt.get('momentum', 0.9)))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


# ---------------------------------------------------------------------------
# Data.

def load_sources(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> list[Any]:
  """Random-access sources of `config.dataset` for `splits`."""
  from irstd_jax import datasets  # pylint: disable=g-import-not-at-top
  ds = config.dataset
  try:
    return [datasets.load(ds.name, split, source_dir=ds.source_dir,
                          data_dir=ds.data_dir, **_plain(ds.get('options', {})))
            for split in splits]
  except ValueError as error:  # The datasets' messages say what is missing and the fix.
    raise DatasetError(
        f'{error}\nWith irstd_jax.main: --config.dataset.source_dir=PATH for the raw '
        'data, --config.dataset.data_dir=PATH (or $IRSTD_DATA_DIR) for the built '
        'files.') from error


class DatasetError(ValueError):
  """The config's dataset cannot be loaded (missing, incomplete or misnamed)."""


def _input_spec(config, source):
  """The config's input fields, concrete (`source`'s statistics if needed)."""
  from irstd_jax import recipes  # pylint: disable=g-import-not-at-top
  inp = config.input
  return recipes.resolve(
      inp.recipe, config.dataset.name, image_size=inp.image_size,
      crop_size=inp.crop_size, num_channels=inp.num_channels,
      normalization=inp.get('normalization'), resolution=config.eval.resolution,
      train_source=source)


def create_train_iterator(config: ml_collections.ConfigDict, source: Any) -> Iterator[Any]:
  """This host's slice of the training batches (resumable: get/set_state)."""
  from irstd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  spec = _input_spec(config, source)
  return input_pipeline.train_iterator(
      source, recipe=spec.recipe, batch_size=config.input.batch_size, seed=config.seed,
      size=spec.train_size, num_channels=spec.num_channels, mean_std=spec.mean_std,
      process_index=jax.process_index(), process_count=jax.process_count())


def eval_batches(config: ml_collections.ConfigDict, source: Any) -> Iterator[dict[str, Any]]:
  """The evaluation batches, in full on every host."""
  from irstd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  ev = config.eval
  spec = _input_spec(config, source)
  return input_pipeline.eval_batches(
      source, batch_size=ev.batch_size, resolution=spec.eval_resolution,
      pad_multiple=ev.pad_multiple, max_shapes=ev.get('max_shapes', 4),
      num_channels=spec.num_channels, mean_std=spec.mean_std)


def _device_eval_batch(batch: dict[str, Any], mesh) -> dict[str, jax.Array]:
  """The batch on the mesh, padded with invalid entries to the device count."""
  arrays = sharding.pad_batch({k: batch[k] for k in ('image', 'mask', 'valid')},
                              mesh.size)
  data = sharding.batch_sharded(mesh)
  return {k: sharding.global_array(v, data) for k, v in arrays.items()}


# ---------------------------------------------------------------------------
# Evaluation.

def evaluate(program: steps.Program, model_state: Any, batches: Iterator[dict[str, Any]],
             mesh: jax.sharding.Mesh, *, num_examples: int = 0,
             pd_fa_curve: bool = False) -> tuple[dict[str, Any], list[reporting.Example]]:
  """All metrics of the model on `batches`, accumulated on the devices.

  Args:
    program: from `steps.make_program`.
    model_state: the model part of the training state.
    batches: from `eval_batches` (image, mask, valid, id).
    mesh: the device mesh.
    num_examples: how many images to return with their predictions.
    pd_fa_curve: also Pd/Fa at 5 more thresholds (5 more connected-component
      passes per batch; off during training).

  Returns:
    `metrics.compute` of the accumulated statistics, and the examples.
  """
  from irstd_jax import metrics  # pylint: disable=g-import-not-at-top
  stats = metrics.init(pd_fa_thresholds=None if pd_fa_curve else ())
  stats = jax.device_put(stats, sharding.replicated(mesh))
  examples: list[reporting.Example] = []
  for batch in batches:
    device_batch = _device_eval_batch(batch, mesh)
    stats = program.eval_step(model_state, stats, device_batch)
    if len(examples) < num_examples:
      probs = sharding.to_host(program.predict(model_state, device_batch['image']))
      for i, image_id in enumerate(batch['id']):
        if len(examples) < num_examples and np.any(batch['valid'][i]):
          examples.append(reporting.Example.crop(image_id, batch, i, probs[i]))
  return metrics.compute(sharding.to_host(stats)), examples


def predict_examples(program: steps.Program, model_state: Any, batches: Iterator[dict[str, Any]],
                     mesh: jax.sharding.Mesh, limit: int) -> list[reporting.Example]:
  """Predictions for the first `limit` images (no metrics; stops early)."""
  examples: list[reporting.Example] = []
  for batch in batches:
    if len(examples) >= limit:
      break
    probs = sharding.to_host(program.predict(model_state, _device_eval_batch(batch, mesh)['image']))
    for i, image_id in enumerate(batch['id']):
      if len(examples) < limit and np.any(batch['valid'][i]):
        examples.append(reporting.Example.crop(image_id, batch, i, probs[i]))
  return examples


def _overlay_limit(config) -> int:
  """eval.num_overlays as a count (-1: every image)."""
  return sys.maxsize if config.eval.num_overlays < 0 else int(config.eval.num_overlays)


# ---------------------------------------------------------------------------
# The loop.

def _restore(checkpoints, step, state, workdir):
  """Checkpoint `step` into `state` (same shapes and shardings), and its meta."""
  try:
    restored, meta = checkpoints.restore(step, state)
  except ValueError as error:  # Shapes or structure differ.
    raise IncompatibleWorkdirError(
        f'Checkpoint {step} in {workdir} does not fit this config\'s model: '
        f'{error}. Use a new --workdir, or the config that wrote this one.') from error
  return restored, meta


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf."""


class IncompatibleWorkdirError(ValueError):
  """The workdir's checkpoints were written by an incompatible config."""


def _check_compatible(meta: dict[str, Any], description: dict[str, Any],
                      workdir: str, steps_per_epoch: int | None = None) -> None:
  """Refuses to resume a workdir written by an incompatible config."""
  saved = meta.get('model')
  if saved != description:
    raise IncompatibleWorkdirError(
        f'{workdir} holds checkpoints of another model: {saved}, but this '
        f'config builds {description}. Use a new --workdir, or the config '
        'that wrote this one.')
  if steps_per_epoch is not None and meta.get('steps_per_epoch') not in (None, steps_per_epoch):
    raise IncompatibleWorkdirError(
        f"{workdir} was trained with {meta['steps_per_epoch']} steps per epoch "
        f'and this config gives {steps_per_epoch} (batch size or training split '
        'changed). Use a new --workdir, or restore the batch size and split.')


def _check_finite(losses_on_host: np.ndarray, first_step: int, checkpoints, workdir: str):
  bad = np.flatnonzero(~np.isfinite(losses_on_host))
  if bad.size:
    step = first_step + int(bad[0])
    checkpoints.wait()
    latest = checkpoints.latest_step()
    kept = (f'the last good checkpoint (step {latest}) is kept in '
            f'{checkpoints.directory}' if latest is not None
            else 'no checkpoint had been saved yet')
    raise NonFiniteLossError(
        f'The training loss is {losses_on_host[bad[0]]} at step {step}: training '
        f'stopped, {kept}. Lower optimizer.learning_rate or check the input '
        f'data; rerunning the same command resumes from the last checkpoint '
        f'({workdir}).')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Trains, evaluates every few epochs, checkpoints; resumes from `workdir`.

  Args:
    config: a config from `configs/` (see config_lib.base_config for fields).
    workdir: where checkpoints, metrics.jsonl, TensorBoard events, pictures
      and the summary go. An existing run there is resumed.
    devices: the devices to train on (default: all).

  Returns:
    dict with 'final' and 'best' ({'epoch', 'step', 'metrics'}), 'num_params'
    and 'steps'.
  """
  mesh = sharding.create_mesh(devices)
  is_chief = jax.process_index() == 0
  if config.input.batch_size % mesh.size:
    raise ValueError(f'input.batch_size={config.input.batch_size} must be a '
                     f'multiple of the {mesh.size} devices (each takes an equal share).')
  train_source, eval_source = load_sources(config, (config.dataset.train_split,
                                                    config.eval.split))
  from irstd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  steps_per_epoch = input_pipeline.steps_per_epoch(len(train_source), config.input.batch_size)
  num_epochs = int(config.schedule.num_epochs)
  total_steps = num_epochs * steps_per_epoch
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)

  model = create_model(config)
  num_params = count_params(model)
  program, state = steps.make_program(model, create_optimizer(model, config, learning_rate_fn),
                                config, mesh)
  description = model_description(config)
  checkpoints = checkpointing.Checkpoints(
      os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep,
      best_metric=config.eval.best_metric)
  train_iter = create_train_iterator(config, train_source)

  step, best, last_eval, final_examples = 0, None, None, None
  latest = checkpoints.latest_step()
  if latest is not None:
    _check_compatible(checkpoints.restore_meta(latest), description, workdir,
                      steps_per_epoch)
    state, meta = _restore(checkpoints, latest, state, workdir)
    train_iter.set_state(meta['input_state'])
    step, best, last_eval = meta['step'], meta['best'], meta['last_eval']
    logging.info('Resumed from %s at step %d.', checkpoints.directory, step)

  writer = summary.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
    if step == 0:
      writer.write_hparams(_flatten(config.to_dict()))
  _log_overview(model, num_params, mesh, len(train_source), steps_per_epoch, total_steps,
                workdir if is_chief else None)
  _print(f'{config.model.name}: {num_params / 1e6:.3f} M parameters; '
         f'{len(train_source)} training images, {steps_per_epoch} steps per epoch, '
         f'{num_epochs} epochs ({total_steps} steps) on {mesh.size} device(s)'
         + (f'; resuming at step {step}' if step else '') + '.')

  def save(epoch, result):
    meta = {'step': step, 'epoch': epoch, 'input_state': train_iter.get_state(),
            'best': best, 'last_eval': last_eval, 'model': description,
            'steps_per_epoch': steps_per_epoch, 'seed': config.seed}
    checkpoints.save(step, state, meta,
                     metrics=None if result is None else reporting.scalar_metrics(result))

  progress = _progress_bar(total_steps, step, is_chief)
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch + 1
      epoch_end = epoch * steps_per_epoch
      pending, pending_first, epoch_losses, epoch_first = [], step + 1, [], step
      start = time.perf_counter()
      while step < epoch_end:
        batch = input_pipeline.shard_batch(next(train_iter), sharding.batch_sharded(mesh))
        state, outputs = program.train_step(state, batch)
        step += 1
        pending.append(outputs['loss'])
        if step % config.log_every_steps == 0 or step == epoch_end:
          values = np.asarray(sharding.to_host(pending), np.float64)
          _check_finite(values, pending_first, checkpoints, workdir)
          epoch_losses.extend(values.tolist())
          progress.update(len(pending))
          progress.set_postfix(loss=f'{values[-1]:.4f}', epoch=epoch, refresh=False)
          pending, pending_first = [], step + 1
      seconds = time.perf_counter() - start
      train_scalars = {
          'train/loss': float(np.mean(epoch_losses)),
          'train/learning_rate': float(learning_rate_fn(step - 1)),
          'train/grad_norm': float(sharding.to_host(outputs['grad_norm'])),
          'train/steps_per_second': (step - epoch_first) / seconds,
          'epoch': epoch}
      writer.write_scalars(step, train_scalars)
      remaining = (total_steps - step) / max(train_scalars['train/steps_per_second'], 1e-9)
      line = (f'epoch {epoch}/{num_epochs}  step {step}  loss {train_scalars["train/loss"]:.4f}  '
              f'lr {train_scalars["train/learning_rate"]:.2e}  '
              f'{train_scalars["train/steps_per_second"]:.2f} steps/s  '
              f'ETA {_duration(remaining)}')

      result = None
      if config_lib.is_epoch_due(epoch, config.eval.every_epochs, num_epochs):
        result, examples = evaluate(program, state['model'], eval_batches(config, eval_source),
                                    mesh, num_examples=max(
                                        config.eval.num_images,
                                        _overlay_limit(config) if epoch == num_epochs else 0))
        if epoch == num_epochs:
          final_examples = examples  # For the overlays: no second pass.
        scalars = reporting.scalar_metrics(result)
        last_eval = {'epoch': epoch, 'step': step, 'metrics': scalars}
        if _is_better(scalars, best, config.eval.best_metric):
          best = last_eval
        writer.write_scalars(step, {f'{config.eval.split}/{k}': v for k, v in result.items()})
        if is_chief and examples:
          writer.write_images(step, {
              f'{config.eval.split}/input_mask_prediction/{i}':
                  visualization.panel(e.image, e.mask, e.prob, e.valid)
              for i, e in enumerate(examples[:config.eval.num_images])})
        line += (f'\n  {config.eval.split} @ epoch {epoch}: {reporting.metrics_line(scalars)}'
                 f'  (best {config.eval.best_metric} '
                 f'{best["metrics"][config.eval.best_metric]:.4f} @ epoch {best["epoch"]})')
      if result is not None or config_lib.is_epoch_due(
          epoch, config.checkpoint.every_epochs, num_epochs):
        save(epoch, result)
      writer.flush()
      progress.write(line) if is_chief else logging.info(line)  # pylint: disable=expression-not-assigned
    return _final_report(config, workdir, program, state, checkpoints, eval_source,
                         mesh, last_eval, best, num_params, writer, is_chief, final_examples)
  finally:
    progress.close()
    train_iter.close()
    writer.close()
    checkpoints.close()  # Waits for the last save.


def _final_report(config, workdir, program, state, checkpoints, eval_source, mesh,
                  last_eval, best, num_params, writer, is_chief,
                  examples=None) -> dict[str, Any]:
  """Final-epoch and best-epoch metrics (labelled), the table, overlays."""
  split = config.eval.split
  rows = []
  if last_eval is not None:
    rows.append(('final', last_eval['epoch'], last_eval['metrics']))
    writer.write_scalars(last_eval['step'], {f'final/{split}/{k}': v
                                             for k, v in last_eval['metrics'].items()})
  if best is not None:
    rows.append((f'best {config.eval.best_metric} (chosen on {split})', best['epoch'],
                 best['metrics']))
    writer.write_scalars(last_eval['step'] if last_eval else best['step'], {
        **{f'best/{split}/{k}': v for k, v in best['metrics'].items()},
        'best/epoch': best['epoch'], 'best/step': best['step']})
  table = reporting.summary_table(rows, num_params)
  if config.eval.num_overlays:
    if examples is None:  # A finished run started again: predict once more.
      examples = predict_examples(program, state['model'], eval_batches(config, eval_source),
                                  mesh, _overlay_limit(config))
    examples = examples[:_overlay_limit(config)]
    directory = os.path.join(workdir, 'predictions', f'final_{split}')
    if is_chief:
      reporting.write_overlays(examples, directory, config.eval.threshold)
  if is_chief:
    with open(os.path.join(workdir, 'summary.md'), 'w', encoding='utf-8') as f:
      f.write(f'# {config.model.name} on {config.dataset.name} ({split} split)\n\n'
              f'{table}\n\nmIoU, nIoU, F1, Pd in percent; Fa in false-alarm pixels '
              'per million. "best" is chosen on the split it is reported on, as '
              'the GaNet and GGL-Net codes do; "final" is the last epoch '
              '(BasicIRSTD).\n')
  _print('\n' + table + f'\n\nCheckpoints: {checkpoints.directory} (steps '
         f'{checkpoints.all_steps()}, best {checkpoints.best_step()}).')
  return {'final': last_eval, 'best': best, 'num_params': num_params,
          'steps': checkpoints.latest_step()}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        checkpoint: str | int = 'best', split: str | None = None,
                        devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Scores a checkpoint of `workdir` on `split` (default: config.eval.split).

  Writes eval_<split>_<checkpoint>.json and prediction overlays to the workdir.

  Returns:
    The metrics dict (as `metrics.compute` gives it) plus 'step' and 'epoch'.
  """
  mesh = sharding.create_mesh(devices)
  split = split or config.eval.split
  (source,) = load_sources(config, (split,))
  model = create_model(config)
  optimizer = create_optimizer(model, config, optax.constant_schedule(0.0))
  program, state = steps.make_program(model, optimizer, config, mesh)
  checkpoints = checkpointing.Checkpoints(
      os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep,
      best_metric=config.eval.best_metric)
  step = checkpoints.resolve(checkpoint)
  _check_compatible(checkpoints.restore_meta(step), model_description(config), workdir)
  state, meta = _restore(checkpoints, step, state, workdir)
  result, examples = evaluate(program, state['model'], eval_batches(config, source), mesh,
                              num_examples=_overlay_limit(config))
  scalars = reporting.scalar_metrics(result)
  name = f'{checkpoint}_step{step}' if not str(checkpoint).isdigit() else f'step{step}'
  if jax.process_index() == 0:
    reporting.write_overlays(examples, os.path.join(workdir, 'predictions', f'{name}_{split}'),
                   config.eval.threshold)
    with open(os.path.join(workdir, f'eval_{split}_{name}.json'), 'w', encoding='utf-8') as f:
      json.dump({'step': step, 'epoch': meta['epoch'], 'split': split,
                 'checkpoint': str(checkpoint),
                 'metrics': summary.to_json(result)}, f, indent=1)
  _print(reporting.summary_table([(f'{checkpoint} (step {step})', meta['epoch'], scalars)],
                       count_params(model)))
  checkpoints.close()
  return {**result, 'step': step, 'epoch': meta['epoch']}


# ---------------------------------------------------------------------------
# Small helpers.

def _is_better(scalars, best, metric) -> bool:
  if metric not in scalars:
    raise ValueError(f'eval.best_metric={metric!r} is not a metric; choose one of '
                     f'{sorted(scalars)}.')
  # Ties go to the later epoch, as orbax's BestN keeps the later checkpoint.
  return best is None or scalars[metric] >= best['metrics'][metric]


def _plain(value: Any) -> Any:
  """ConfigDicts and FrozenConfigDicts as plain dicts, tuples as lists."""
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _print(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)
  logging.info(text)


def _progress_bar(total: int, initial: int, enabled: bool):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step', disable=not enabled,
                   dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


def _log_overview(model, num_params, mesh, num_train, steps_per_epoch, total_steps,
                  workdir=None):
  """Logs the parameter table (and writes it to workdir/parameters.txt)."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  overview = parameter_overview.get_parameter_overview(
      nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  logging.info('Parameters:\n%s', overview)
  if workdir is not None:
    with open(os.path.join(workdir, 'parameters.txt'), 'w', encoding='utf-8') as f:
      f.write(overview + '\n')
  logging.info('%d parameters, mesh %s, %d processes, %d training images, '
               '%d steps/epoch, %d steps.', num_params, dict(mesh.shape),
               jax.process_count(), num_train, steps_per_epoch, total_steps)
