"""Training and evaluation: a library of small functions and the loop.

`train_and_evaluate(config, workdir)` trains a model with the config's recipe,
evaluates it every few epochs on the test split, keeps the latest and the best
checkpoints and resumes from `workdir` after an interruption.
`evaluate_checkpoint(config, workdir)` scores a saved checkpoint on a split.
Both resolve the config once (`config_lib.resolve`) and score through
`evaluation.Evaluator`.

Parallelism: one 1-D device mesh with axis 'data'. The train step is
`jax.jit`-compiled with the batch sharded over 'data' and the state replicated;
XLA inserts the all-reduces, so batch-norm statistics and gradients are over
the global batch and 1 device and N devices train the same model (up to
reduction order). Hosts each read their own slice of every batch.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import math
import os
import sys
import time
from typing import Any, Iterator

from absl import logging
from clu import parameter_overview
from flax import nnx
import jax
import ml_collections
import numpy as np
import optax
from tqdm import auto as tqdm

from irstd_jax import checkpointing
from irstd_jax import compilation
from irstd_jax import config_lib
from irstd_jax import datasets
from irstd_jax import evaluation
from irstd_jax import input_pipeline
from irstd_jax import metric_writers
from irstd_jax import models
from irstd_jax import optim
from irstd_jax import precise_bn
from irstd_jax import recipes
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax.evaluation import pictures
from irstd_jax.evaluation import report


# ---------------------------------------------------------------------------
# Model.

def create_model(config: ml_collections.ConfigDict, *, seed: int | None = None) -> nnx.Module:
  """Builds `config.model.name` with `config.model.options`, in train mode.

  The config must be resolved (`config_lib.resolve`). A name of the form
  'package.module:Class' builds that class instead of a registered model, so
  that user models train with the same loop. The model takes
  `input.num_channels` as its `in_channels` unless the options set it, and a
  `model.dtype` other than float32 as its `dtype`.
  """
  name = config.model.name
  options = _plain(config.model.get('options', {}))
  unresolved = [k for k, v in options.items() if v == config_lib.TRAIN_SIZE]
  if unresolved:
    raise ValueError(f'model.options {unresolved} still say {config_lib.TRAIN_SIZE!r}: '
                     'resolve the config first (config_lib.resolve(config, source)).')
  dtype = config.model.get('dtype', 'float32')
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.model.dtype={dtype!r}: use 'float32' (default) or "
                     "'bfloat16' (mixed precision for GPUs and TPUs).")
  if dtype != 'float32':
    options['dtype'] = dtype
  if ':' in name:
    module_name, cls_name = name.split(':')
    cls = getattr(importlib.import_module(module_name), cls_name)
  else:
    cls = models.get_class(name)
  if 'in_channels' in inspect.signature(cls).parameters:
    options.setdefault('in_channels', int(config.input.num_channels))
  rngs = nnx.Rngs(config.seed if seed is None else seed)
  model = (cls(**options, rngs=rngs) if ':' in name
           else models.build(name, rngs=rngs, **options))
  model.train()
  return model


def count_params(model: nnx.Module) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def model_description(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a checkpoint must match to be restored into this config's model."""
  return json.loads(json.dumps({
      'name': config.model.name,
      'options': _plain(config.model.get('options', {})),
      'num_channels': config.input.num_channels,
  }))


# ---------------------------------------------------------------------------
# Data.

def load_sources(config: ml_collections.ConfigDict, splits: tuple[str, ...]) -> list[Any]:
  """Random-access sources of `config.dataset` for `splits`."""
  ds = config.dataset
  try:
    return [datasets.load(ds.name, split, source_dir=ds.source_dir,
                          data_dir=ds.data_dir, **_plain(ds.get('options', {})))
            for split in splits]
  except datasets.MissingSplitError as error:
    raise DatasetError(
        f'{error} Choose them with --config.dataset.train_split=NAME and '
        '--config.eval.split=NAME.') from error
  except ValueError as error:  # The datasets' messages say what is missing and the fix.
    raise DatasetError(
        f'{error}\nWith irstd_jax.main: --config.dataset.source_dir=PATH for the raw '
        'data, --config.dataset.data_dir=PATH (or $IRSTD_DATA_DIR) for the built '
        'files.') from error


class DatasetError(ValueError):
  """The config's dataset cannot be loaded (missing, incomplete or misnamed)."""


def create_train_iterator(config: ml_collections.ConfigDict, source: Any) -> Iterator[Any]:
  """This host's slice of the training batches (resumable: get/set_state)."""
  inp = config.input
  final_size, final_epochs = inp.get('final_size', 0), inp.get('final_epochs', 0)
  final_share = inp.get('final_positive_crop_probability')
  num_epochs = int(config.schedule.num_epochs)
  if (final_size or final_share is not None) and not 0 < final_epochs <= num_epochs:
    raise ValueError(f'input.final_size={final_size} and input.final_positive_crop_probability='
                     f'{final_share} need input.final_epochs in [1, schedule.num_epochs='
                     f'{num_epochs}], got {final_epochs}. Fix: set --config.input.final_epochs, '
                     'or final_size=0 and final_positive_crop_probability=None (off).')
  final_from_step = None
  if final_size or final_share is not None:
    steps = input_pipeline.steps_per_epoch(len(source), inp.batch_size)
    final_from_step = (num_epochs - final_epochs) * steps
  return input_pipeline.train_iterator(
      source, recipe=inp.recipe, batch_size=inp.batch_size, seed=config.seed,
      size=config_lib.training_size(config), num_channels=inp.num_channels,
      mean_std=(inp.mean, inp.std),
      process_index=jax.process_index(), process_count=jax.process_count(),
      positive_crop_probability=inp.get('positive_crop_probability', 0.5),
      final_size=final_size or None, final_from_step=final_from_step,
      final_positive_crop_probability=final_share)


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
        f'{error}. Use a new --workdir, or the config that wrote this one (its '
        'model, options and optimizer.ema_decay: a moving average is kept or not).'
    ) from error
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
  return train_seeds(config, {int(config.seed): workdir}, devices=devices)[0]


@dataclasses.dataclass
class _Run:
  """One seed's share of a (possibly stacked) training: its data, logs and checkpoints."""
  seed: int
  workdir: str
  train_iter: Any
  checkpoints: checkpointing.Checkpoints
  writer: Any = None
  best: Any = None
  last_eval: Any = None
  final_examples: Any = None
  resumed_losses: list[float] = dataclasses.field(default_factory=list)
  epoch_losses: list[float] = dataclasses.field(default_factory=list)


def train_seeds(config: ml_collections.ConfigDict, workdirs: dict[int, str], *,
                devices: list[jax.Device] | None = None) -> list[dict[str, Any]]:
  """Trains one run per seed, all seeds as one program (`jax.vmap` over the state).

  Each seed's run is the run `train_and_evaluate` makes with `config.seed`
  set to it (same initialisation, batches, checkpoints, logs and summary in
  its own workdir), up to float32 reduction order: the seeds' models are
  stacked along a leading axis and one compiled step trains them all, which
  keeps a device busy that one small model leaves idle. With one seed nothing
  is stacked. Stacked seeds must be at the same step (all new, or all
  checkpointed together).

  Args:
    config: as for `train_and_evaluate`; its `seed` is replaced by each seed.
    workdirs: seed -> workdir.
    devices: the devices to train on (default: all); each step's batch is
      split over them, for every seed.

  Returns:
    `train_and_evaluate`'s dict for each seed, in the order of `workdirs`.
  """
  mesh = sharding.create_mesh(devices)
  is_chief = jax.process_index() == 0
  if config.input.batch_size % mesh.size:
    raise ValueError(f'input.batch_size={config.input.batch_size} must be a '
                     f'multiple of the {mesh.size} devices (each takes an equal share).')
  train_source, eval_source = load_sources(config, config_lib.splits(config))
  config = config_lib.resolve(config, train_source)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(train_source), config.input.batch_size)
  num_epochs = int(config.schedule.num_epochs)
  total_steps = num_epochs * steps_per_epoch
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  description = model_description(config)
  stacked = len(workdirs) > 1

  runs, states, model = [], [], None
  for seed, workdir in workdirs.items():
    seed_config = _with_seed(config, seed)
    model = create_model(seed_config)
    optimizer = optim.create_optimizer(model, config, learning_rate_fn)
    if not states:
      train_step, first_state = steps.make_train_step(model, optimizer, config, mesh,
                                                      stacked=stacked)
      states.append(first_state)
    else:
      states.append(steps.create_state(model, optimizer, mesh,
                                       ema=bool(steps.ema_decay(config))))
    runs.append(_Run(seed, workdir, create_train_iterator(seed_config, train_source),
                     checkpointing.Checkpoints(
                         os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep,
                         best_metric=config.eval.best_metric)))
  num_params = count_params(model)
  evaluator = evaluation.Evaluator(config, eval_source, mesh, model)
  final_config = config_lib.final_eval_config(config)
  final_evaluator = evaluator
  if final_config.eval.max_shapes != config.eval.max_shapes:
    final_evaluator = evaluation.Evaluator(final_config, eval_source, mesh, model)
  precise_images = {False: config.eval.precise_bn_images,  # The curve's, the end's.
                    True: final_config.eval.precise_bn_images}
  calibration = (any(precise_images.values())
                 and precise_bn.calibration_graphdef(model))

  latest = {run.checkpoints.latest_step() for run in runs}
  if len(latest) > 1:
    raise ValueError(
        f'Seeds {list(workdirs)} are at different steps ({sorted(latest, key=str)}) '
        'and cannot be trained stacked: train them one by one.')
  (latest,) = latest
  step = 0
  if latest is not None:
    for i, run in enumerate(runs):
      _check_compatible(run.checkpoints.restore_meta(latest), description, run.workdir,
                        steps_per_epoch)
      states[i], meta = _restore(run.checkpoints, latest, states[i], run.workdir)
      run.train_iter.set_state(meta['input_state'])
      step, run.best, run.last_eval = meta['step'], meta['best'], meta['last_eval']
      run.resumed_losses = meta.get('epoch_losses', [])
      logging.info('Resumed from %s at step %d.', run.checkpoints.directory, step)
  state = steps.stack(states, mesh) if stacked else states[0]
  del states

  for run in runs:
    run.writer = metric_writers.create_default_writer(
        run.workdir, just_logging=not is_chief,
        resume_step=step if latest is not None else None)
    if is_chief:
      os.makedirs(run.workdir, exist_ok=True)
      with open(os.path.join(run.workdir, 'config.json'), 'w', encoding='utf-8') as f:
        f.write(_with_seed(config, run.seed).to_json_best_effort(indent=2))
      if step == 0:
        run.writer.write_hparams(_flatten(_with_seed(config, run.seed).to_dict()))
        run.writer.flush()
    _log_overview(model, num_params, mesh, len(train_source), steps_per_epoch, total_steps,
                  run.workdir if is_chief else None)
  _print(f'{config.model.name}: {num_params / 1e6:.3f} M parameters; '
         f'{len(train_source)} training images, {steps_per_epoch} steps per epoch, '
         f'{num_epochs} epochs ({total_steps} steps) on {mesh.size} device(s)'
         + (f'; seeds {list(workdirs)} stacked' if stacked else '')
         + (f'; resuming at step {step}' if step else '') + '.')

  def member(i):
    return steps.unstack(state, i) if stacked else state

  def recalibrated(num_images):
    """Each run's evaluated weights with precise batch-norm statistics."""
    members = []
    for i in range(len(runs)):
      member_state = dict(member(i))
      key = 'ema' if 'ema' in member_state else 'model'  # What `steps.eval_weights` scores.
      member_state[key] = precise_bn.recalibrate(
          member_state[key], precise_bn.training_batches(config, train_source, num_images),
          graphdef=calibration, mesh=mesh, num_images=num_images, show_progress=is_chief)
      members.append(member_state)
    return steps.stack(members, mesh) if stacked else members[0]

  def save(epoch, scalars_by_run=None):
    for i, run in enumerate(runs):
      meta = {'step': step, 'epoch': epoch, 'input_state': run.train_iter.get_state(),
              'best': run.best, 'last_eval': run.last_eval, 'model': description,
              'input': _input_description(config), 'epoch_losses': list(run.epoch_losses),
              'steps_per_epoch': steps_per_epoch, 'seed': run.seed,
              'precise_bn': calibrated_at == step}
      run.checkpoints.save(step, member(i), meta,
                           metrics=scalars_by_run[i] if scalars_by_run else None)

  batch_sharding = (sharding.stacked_batch_sharded(mesh) if stacked
                    else sharding.batch_sharded(mesh))
  save_every = 60 * float(config.checkpoint.get('every_minutes') or 0)
  last_save, compiled = time.monotonic(), False
  calibrated_at = None  # The step whose statistics precise BN replaced.
  size_at = getattr(runs[0].train_iter, 'size_at', None)
  # tqdm's own time left assumes the current pace, minutes short before larger crops.
  own_eta = size_at is not None and size_at(0) != size_at(total_steps - 1)
  progress = _progress_bar(total_steps, step, is_chief, own_eta)
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch + 1
      epoch_end = epoch * steps_per_epoch
      pending, pending_first, shown = [], step + 1, step
      for run in runs:  # A run resumed inside an epoch keeps that epoch's earlier losses.
        run.epoch_losses = list(run.resumed_losses) if step % steps_per_epoch else []
        run.resumed_losses = []
      timed_steps, train_seconds = 0, 0.0
      while step < epoch_end:
        started = time.perf_counter()
        batches = [next(run.train_iter) for run in runs]
        batch = steps.stack_batches(batches) if stacked else batches[0]
        batch = input_pipeline.shard_batch(batch, batch_sharding)
        if not compiled:
          progress.set_description_str('compiling the train step')
        state, outputs = train_step(state, batch)
        step += 1
        pending.append(outputs['loss'])
        if len(pending) > 1:  # One step stays in flight; the bar counts finished ones.
          pending[-2].block_until_ready()
          progress.update(step - 1 - shown)
          shown = step - 1
        due = step % config.log_every_steps == 0 or step == epoch_end
        save_due = save_every and time.monotonic() - last_save >= save_every
        if due or save_due:
          # (steps,) for one seed, (steps, seeds) stacked.
          values = np.asarray(sharding.to_host(pending), np.float64).reshape(len(pending), -1)
          for i, run in enumerate(runs):
            _check_finite(values[:, i], pending_first, run.checkpoints, run.workdir)
            run.epoch_losses.extend(values[:, i].tolist())
          progress.update(step - shown)
          shown = step
          postfix = {'loss': ' '.join(f'{v:.4f}' for v in values[-1]), 'epoch': epoch}
          rate = progress.format_dict.get('rate') if own_eta else None
          if rate:
            postfix['ETA'] = _duration(
                _remaining_seconds(runs[0].train_iter, step, total_steps, rate))
          progress.set_postfix(postfix, refresh=False)
          pending, pending_first = [], step + 1
        if compiled:  # The first step's compilation is not training time.
          train_seconds += time.perf_counter() - started
          timed_steps += 1
        else:
          jax.block_until_ready(outputs['loss'])
          compiled = True
          progress.set_description_str('')
          progress.unpause()
        if save_due and step < epoch_end:  # At the epoch's end the epoch saves.
          save(epoch)
          last_save = time.monotonic()
          progress.unpause()
      steps_per_second = timed_steps / train_seconds if train_seconds else math.nan
      grad_norms = np.asarray(sharding.to_host(outputs['grad_norm']), np.float64).reshape(-1)
      remaining = _remaining_seconds(runs[0].train_iter, step, total_steps, steps_per_second)
      evaluate = config_lib.is_epoch_due(epoch, config.eval.every_epochs, num_epochs)
      scalars_by_run, lines = [], []
      if evaluate and precise_images[epoch == num_epochs]:
        state = recalibrated(precise_images[epoch == num_epochs])
        calibrated_at = step
      for i, run in enumerate(runs):
        train_scalars = {
            'train/loss': float(np.mean(run.epoch_losses)),
            'train/learning_rate': float(learning_rate_fn(step - 1)),
            'train/grad_norm': float(grad_norms[i]),
            'train/steps_per_second': steps_per_second,
            'epoch': epoch}
        run.writer.write_scalars(step, train_scalars)
        line = ((f'seed {run.seed}  ' if stacked else '')
                + f'epoch {epoch}/{num_epochs}  step {step}  '
                f'loss {train_scalars["train/loss"]:.4f}  '
                f'lr {train_scalars["train/learning_rate"]:.2e}  '
                f'{steps_per_second:.2f} steps/s  ETA {_duration(remaining)}')
        scalars = None
        if evaluate:
          last = epoch == num_epochs
          result = (final_evaluator if last else evaluator).run(
              steps.eval_weights(member(i)), show_progress=is_chief, num_examples=max(
                  config.eval.num_images, _overlay_limit(config) if last else 0))
          if last:
            run.final_examples = result.examples  # For the overlays: no second pass.
            if is_chief:  # Every metric, curves included (sweep figures read the ROC).
              _write_json(os.path.join(run.workdir, f'eval_{config.eval.split}_final.json'),
                          {'step': step, 'epoch': epoch, 'split': config.eval.split,
                           'checkpoint': 'final',
                           'metrics': metric_writers.to_json(result.metrics),
                           **_parts_json(result)})
          scalars = result.scalars
          run.last_eval = {'epoch': epoch, 'step': step, 'metrics': scalars}
          if _is_better(scalars, run.best, config.eval.best_metric):
            run.best = run.last_eval
          _write_eval(run.writer, step, config, result, is_chief)
          line += (f'\n  {config.eval.split} @ epoch {epoch}: {report.metrics_line(scalars)}'
                   f'  (best {config.eval.best_metric} '
                   f'{run.best["metrics"][config.eval.best_metric]:.4f} @ epoch '
                   f'{run.best["epoch"]})')
        scalars_by_run.append(scalars)
        lines.append(line)
      if evaluate or config_lib.is_epoch_due(epoch, config.checkpoint.every_epochs, num_epochs):
        save(epoch, scalars_by_run)
        last_save = time.monotonic()
      for run in runs:
        run.writer.flush()
      progress.unpause()  # Evaluation and saving are not training time.
      for line in lines:
        progress.write(line) if is_chief else logging.info(line)  # pylint: disable=expression-not-assigned
    reports = []
    for i, run in enumerate(runs):
      _report_final(config, run.workdir, run.writer, run.last_eval, run.best, num_params)
      if config.eval.num_overlays:
        limit = _overlay_limit(config)
        if run.final_examples is None:  # A finished run started again: predict once more.
          run.final_examples = evaluator.predict(steps.eval_weights(member(i)), limit)
        if is_chief:
          report.write_overlays(run.final_examples[:limit], os.path.join(
              run.workdir, 'predictions', f'final_{config.eval.split}'),
                                config.eval.threshold)
      run.checkpoints.wait()
      _print(f'\nCheckpoints: {run.checkpoints.directory} (steps '
             f'{run.checkpoints.all_steps()}, best {run.checkpoints.best_step()}).')
      reports.append({'final': run.last_eval, 'best': run.best, 'num_params': num_params,
                      'steps': run.checkpoints.latest_step()})
    return reports
  finally:
    progress.close()
    for run in runs:
      run.train_iter.close()
      if run.writer is not None:
        run.writer.close()
      run.checkpoints.close()  # Waits for the last save.


def _parts_json(result: evaluation.Result) -> dict[str, Any]:
  """{'parts': each part's metrics} for a split made of parts, else {}."""
  return {'parts': metric_writers.to_json(result.parts)} if result.parts else {}


def _with_part_rows(rows: list[tuple[str, Any, dict[str, float]]]) -> list[tuple]:
  """Each row, then one row per part where its scalars hold parts
  ('nuaa_sirst/miou', ...): the per-part lines of a SIRST3 table."""
  out = []
  for label, epoch, scalars in rows:
    parts = list(dict.fromkeys(k.split('/')[0] for k in scalars if '/' in k))
    out.append((f'{label}, all' if parts else label, epoch, scalars))
    for part in parts:
      out.append((f'{label}, {part}', epoch,
                  {k.split('/', 1)[1]: v for k, v in scalars.items() if k.startswith(part + '/')}))
  return out


def _write_json(path: str, content: Any) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(content, f, indent=1)


def _with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  if int(config.seed) == seed:
    return config
  config = copy.deepcopy(config)
  config.seed = seed
  return config


def _input_description(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved input, kept with each checkpoint for inference on new images."""
  inp = config.input
  return {'recipe': inp.recipe, 'image_size': inp.image_size, 'crop_size': inp.crop_size,
          'final_size': inp.get('final_size', 0), 'final_epochs': inp.get('final_epochs', 0),
          'final_positive_crop_probability': inp.get('final_positive_crop_probability'),
          'num_channels': inp.num_channels, 'normalization': inp.normalization,
          'mean': inp.mean, 'std': inp.std}


def _write_eval(writer, step: int, config, result: evaluation.Result, is_chief: bool) -> None:
  """An evaluation's scalars, and input / mask / prediction panels, to the writer."""
  split = config.eval.split
  # Each part's scalars (SIRST3) as '<split>/<part>/<metric>', in the same record.
  writer.write_scalars(step, {**{f'{split}/{k}': v for k, v in result.metrics.items()},
                              **{f'{split}/{k}': v for k, v in result.scalars.items()
                                 if '/' in k}})
  if is_chief and result.examples:
    writer.write_images(step, {
        f'{split}/input_mask_prediction/{i}': pictures.panel(e.image, e.mask, e.prob, e.valid)
        for i, e in enumerate(result.examples[:config.eval.num_images])})


def _report_final(config, workdir, writer, last_eval, best, num_params) -> None:
  """Final-epoch and best-epoch metrics (labelled): scalars, summary.md, console."""
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
  table = report.results_table(_with_part_rows(rows), num_params)
  if jax.process_index() == 0:
    report.write_summary(os.path.join(workdir, 'summary.md'),
                         f'{config.model.name} on {config.dataset.name} ({split} split)', table)
  _print('\n' + table)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        checkpoint: str | int = 'best', split: str | None = None,
                        devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Scores a checkpoint of `workdir` on `split` (default: config.eval.split).

  Writes eval_<split>_<checkpoint>.json and prediction overlays to the workdir.

  Returns:
    The metrics dict (as `metrics.compute` gives it) plus 'step' and 'epoch',
    and 'parts' (each part's dict) for a split made of parts (SIRST3).
  """
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):  # Checked first: nothing is created in workdir.
    raise FileNotFoundError(
        f'No checkpoints in {workdir} (no {directory}): train first, or point '
        '--workdir at a training run.')
  mesh = sharding.create_mesh(devices)
  split = split or config_lib.splits(config)[1]
  (source,) = load_sources(config, (split,))
  statistics = source
  if config.input.normalization == recipes.TRAIN_SPLIT and config.input.mean is None:
    (statistics,) = load_sources(config, config_lib.splits(config)[:1])  # As in training.
  # Scored as the run's final evaluation is (`:cpu`: per image).
  config = config_lib.final_eval_config(config_lib.resolve(config, statistics))
  model = create_model(config)
  state = steps.create_state(
      model, optim.create_optimizer(model, config, optax.constant_schedule(0.0)), mesh,
      ema=bool(steps.ema_decay(config)))
  checkpoints = checkpointing.Checkpoints(directory, keep=config.checkpoint.keep,
                                          best_metric=config.eval.best_metric)
  try:
    step = checkpoints.resolve(checkpoint)
    _check_compatible(checkpoints.restore_meta(step), model_description(config), workdir)
    state, meta = _restore(checkpoints, step, state, workdir)
    _print(f'Evaluating checkpoint {checkpoint} (step {step}, epoch {meta["epoch"]}) of '
           f'{workdir} on {config.dataset.name}/{split} ({len(source)} images).')
    weights = steps.eval_weights(state)
    precise_images = config.eval.precise_bn_images
    recalibrate = bool(precise_images) and not meta.get('precise_bn')
    if recalibrate:  # Saved without precise BN: score it as a run with it would.
      (train_source,) = load_sources(config, config_lib.splits(config)[:1])
      _print('Re-estimating its batch-norm statistics over the training images '
             '(eval.final_precise_bn_images; eval.precise_bn_images=0 scores the saved ones).')
      weights = precise_bn.recalibrate(
          weights, precise_bn.training_batches(config, train_source, precise_images),
          graphdef=precise_bn.calibration_graphdef(model), mesh=mesh,
          num_images=precise_images, show_progress=jax.process_index() == 0)
    started = time.perf_counter()
    with compilation.counting() as compiled:
      result = evaluation.Evaluator(config, source, mesh, model).run(
          weights, num_examples=_overlay_limit(config),
          show_progress=jax.process_index() == 0)
    seconds = time.perf_counter() - started
  finally:
    checkpoints.close()
  _print(f'{split}: {len(source)} images in {seconds:.1f} s; {compiled.describe()}.')
  name = f'{checkpoint}_step{step}' if not str(checkpoint).isdigit() else f'step{step}'
  if jax.process_index() == 0:
    report.write_overlays(result.examples, os.path.join(workdir, 'predictions', f'{name}_{split}'),
                          config.eval.threshold)
    _write_json(os.path.join(workdir, f'eval_{split}_{name}.json'),
                {'step': step, 'epoch': meta['epoch'], 'split': split,
                 'checkpoint': str(checkpoint), 'seconds': round(seconds, 2),
                 'compilation': compiled.as_dict(), 'precise_bn_reestimated': recalibrate,
                 'eval': {k: config.eval.get(k) for k in ('resolution', 'pad_multiple', 'pad',
                                                          'max_shapes', 'batch_size')},
                 'metrics': metric_writers.to_json(result.metrics), **_parts_json(result)})
  _print(report.results_table(
      _with_part_rows([(f'{checkpoint} (step {step})', meta['epoch'], result.scalars)]),
      count_params(model)))
  return {**result.metrics, **({'parts': result.parts} if result.parts else {}),
          'step': step, 'epoch': meta['epoch']}


def save_model(model: nnx.Module, config: ml_collections.ConfigDict, workdir: str, *,
               metrics: dict[str, float] | None = None,
               devices: list[jax.Device] | None = None) -> int:
  """Writes `model` as step 0 of a new workdir, as a run of `config` would.

  For weights trained elsewhere, e.g. official PyTorch weights converted with
  `convert.from_torch`. The workdir then reads as a training run's: eval mode
  (`evaluate_checkpoint`, `python -m irstd_jax.main --mode=eval`) scores it,
  `inference.Predictor.from_workdir` and `python -m irstd_jax.predict
  --workdir` predict with it, and `train_and_evaluate` on it fine-tunes from
  it (from step 0, with a fresh optimizer state and the training stream at
  its start).

  Args:
    model: a model of `config.model`: the variables and shapes that
      `create_model(config)` builds.
    config: the config the workdir stands for (as loaded; resolved here
      against its training split, as training resolves it).
    workdir: a folder without checkpoints; config.json and checkpoints/ are
      written there.
    metrics: an evaluation's scalars (holding `config.eval.best_metric`) that
      rank the checkpoint as the best one. Without them it is only the latest:
      score it with `checkpoint='latest'` (`--checkpoint=latest`).
    devices: the devices of the mesh (default: all).

  Returns:
    The step written (0).
  """
  directory = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(directory) and os.listdir(directory):
    raise IncompatibleWorkdirError(
        f'{workdir} already holds checkpoints: save the model into a new workdir.')
  mesh = sharding.create_mesh(devices)
  (train_source,) = load_sources(config, config_lib.splits(config)[:1])
  config = config_lib.resolve(config, train_source)
  expected = nnx.eval_shape(lambda: create_model(config))

  def shapes(module):
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)),
                        nnx.to_pure_dict(nnx.state(module)))

  if shapes(model) != shapes(expected):
    raise ValueError(
        f'The model does not fit config.model ({model_description(config)}): its '
        'variables or shapes differ. Build it with the options of the config (for '
        'official weights: convert.from_torch(name, weights, **config.model.options)).')
  steps_per_epoch = input_pipeline.steps_per_epoch(len(train_source), config.input.batch_size)
  train_iter = create_train_iterator(config, train_source)
  try:
    input_state = train_iter.get_state()
  finally:
    train_iter.close()
  state = steps.create_state(  # With ema_decay, the average starts at the model.
      model, optim.create_optimizer(model, config, optax.constant_schedule(0.0)), mesh,
      ema=bool(steps.ema_decay(config)))
  meta = {'step': 0, 'epoch': 0, 'input_state': input_state, 'best': None,
          'last_eval': None, 'model': model_description(config),
          'input': _input_description(config), 'epoch_losses': [],
          'steps_per_epoch': steps_per_epoch, 'seed': config.seed}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
  checkpoints = checkpointing.Checkpoints(directory, keep=config.checkpoint.keep,
                                          best_metric=config.eval.best_metric)
  try:
    checkpoints.save(0, state, meta, metrics=metrics)
  finally:
    checkpoints.close()
  return 0


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


def _remaining_seconds(train_iter, step: int, total_steps: int,
                       steps_per_second: float) -> float:
  """Time left at this epoch's pace, scaled by pixels for steps on larger crops.

  `input.final_size` makes the last epochs' steps cost about (final / size)^2
  times more; an ETA from the current pace alone would read minutes short.
  """
  size_at = getattr(train_iter, 'size_at', None)
  if size_at is None or step >= total_steps:
    return (total_steps - step) / steps_per_second
  current = size_at(step - 1)
  work = sum((size_at(later) / current) ** 2 for later in range(step, total_steps))
  return work / steps_per_second


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _print(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)
  logging.info(text)


def _progress_bar(total: int, initial: int, enabled: bool, own_eta: bool = False):
  """The training bar; with `own_eta` it leaves out tqdm's time left.

  tqdm extrapolates the current pace; when the last epochs train on larger
  crops (`input.final_size`) that reads minutes short, so the loop puts
  `_remaining_seconds`' ETA in the postfix instead.
  """
  bar_format = ('{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]'
                if own_eta else None)
  return tqdm.tqdm(total=total, initial=initial, unit='step', disable=not enabled,
                   dynamic_ncols=True, mininterval=1.0, smoothing=0.1,
                   bar_format=bar_format)


def _log_overview(model, num_params, mesh, num_train, steps_per_epoch, total_steps,
                  workdir=None):
  """Logs the parameter table (and writes it to workdir/parameters.txt)."""
  overview = parameter_overview.get_parameter_overview(
      nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  logging.info('Parameters:\n%s', overview)
  if workdir is not None:
    with open(os.path.join(workdir, 'parameters.txt'), 'w', encoding='utf-8') as f:
      f.write(overview + '\n')
  logging.info('%d parameters, mesh %s, %d processes, %d training images, '
               '%d steps/epoch, %d steps.', num_params, dict(mesh.shape),
               jax.process_count(), num_train, steps_per_epoch, total_steps)
