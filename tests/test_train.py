"""Training loop: end to end, resume, devices, hosts, eval mode, failures.

One tiny config (a 4-channel U-Net on 8 synthetic 32x32 crops, 2 steps per
epoch, 3 epochs) is shared by every case, so the jitted steps compile once
per module: later runs find them in jax's cache (equal graph definitions).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from irstd_jax import checkpointing
from irstd_jax import config_lib
from irstd_jax import evaluation
from irstd_jax import input_pipeline
from irstd_jax import metrics
from irstd_jax import optim
from irstd_jax import precise_bn
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]

# The tiny config as a config file: the two-process case runs it through main.
TINY_CONFIG = '''
from irstd_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, epochs=3, optimizer='adam')
  c = config_lib.base_config()
  c.dataset.name = 'irstd_synthetic'
  c.dataset.train_split = 'train'
  c.dataset.options = dict(num_train=8, num_test=3, min_size=48, max_size=64, seed=3)
  c.input.recipe = 'basicirstd'
  c.input.crop_size = 32
  c.input.batch_size = 4
  c.model.name = 'unet'
  c.model.options = dict(base_channels=4)
  c.optimizer.name = arg.optimizer
  c.optimizer.learning_rate = 1e-2 if arg.optimizer == 'adam' else 0.1
  c.schedule.num_epochs = arg.epochs
  # SGD runs of any length share one compiled step (same schedule).
  c.schedule.decay_epochs = (2,) if arg.optimizer == 'adam' else ()
  c.eval.every_epochs = 1
  c.eval.batch_size = 4
  c.eval.num_images = 2
  c.eval.num_overlays = 2
  c.checkpoint.keep = 1
  c.log_every_steps = 1
  return c
'''


@pytest.fixture(scope='module', autouse=True)
def fast_compilation():
  """Less XLA optimisation: these tiny steps compile ~2x faster (restored after)."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('configs') / 'tiny.py'
  path.write_text(TINY_CONFIG)
  return path


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny_config(config_file, data_dir, arg=None):
  config = config_lib.load_config(str(config_file), arg)
  config.dataset.data_dir = data_dir
  return config


def resolved(config):
  """The config resolved against its training split, as the trainer does."""
  (source,) = train.load_sources(config, (config.dataset.train_split,))
  return config_lib.resolve(config, source)


@pytest.fixture(scope='module')
def trained(config_file, data_dir, tmp_path_factory):
  """One uninterrupted run, shared by the cases that inspect its outputs."""
  config = tiny_config(config_file, data_dir)
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  report = train.train_and_evaluate(config, workdir)
  return config, workdir, report


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def final_state(config, workdir, step=None):
  """The params, BN statistics and optimizer state of a workdir's checkpoint."""
  mesh = sharding.create_mesh()
  config = resolved(config)
  model = train.create_model(config)
  optimizer = optim.create_optimizer(model, config, optim.create_learning_rate_fn(config, 2))
  state = steps.create_state(model, optimizer, mesh, ema=bool(steps.ema_decay(config)))
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  pure, meta = checkpoints.restore(step or checkpoints.latest_step(), state)
  checkpoints.close()
  return jax.tree.map(np.asarray, pure), meta


class Interrupt(Exception):
  """Stands for a kill: raised from inside the loop."""


class FaultyIterator:
  """Wraps the real training iterator; misbehaves at one batch."""

  def __init__(self, inner, at_batch, fault):
    self.inner, self.at_batch, self.fault, self.count = inner, at_batch, fault, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    batch = next(self.inner)
    if self.count == self.at_batch:
      if self.fault == 'interrupt':
        raise Interrupt()
      batch = dict(batch, image=np.full_like(batch['image'], np.nan))
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)

  def close(self):
    self.inner.close()


def patch_iterator(monkeypatch, at_batch, fault):
  real = train.create_train_iterator
  monkeypatch.setattr(train, 'create_train_iterator',
                      lambda *a, **k: FaultyIterator(real(*a, **k), at_batch, fault))


def test_trains_end_to_end_and_leaves_its_outputs(trained):
  config, workdir, report = trained
  assert report['steps'] == 6 and report['final']['epoch'] == 3
  records = read_jsonl(workdir)
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 3 and all(np.isfinite(losses))
  assert losses[-1] < losses[0]  # lr 1e-2 on 8 images: it learns something.
  evals = [r for r in records if 'test/miou' in r]
  assert [r['step'] for r in evals] == [2, 4, 6]
  for key in ('miou', 'niou', 'f1', 'pd', 'fa', 'auc', 'precision', 'recall'):
    assert all(np.isfinite(r[f'test/{key}']) for r in evals), key
  assert len(evals[-1]['test/roc']['tpr']) == 11  # Curves go to the JSONL file.
  # Best and final, labelled, equal to the logged evaluations.
  best = max(evals, key=lambda r: (r['test/miou'], r['step']))
  assert report['best']['step'] == best['step']
  assert report['best']['metrics']['miou'] == best['test/miou']
  assert report['final']['metrics']['miou'] == evals[-1]['test/miou']
  labelled = [r for r in records if 'best/test/miou' in r]
  assert labelled and labelled[0]['best/epoch'] == report['best']['epoch']
  # Checkpoints: the latest (keep=1) plus the best.
  steps = sorted(int(p) for p in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert steps == sorted({6, best['step']})
  # TensorBoard events with scalars and image panels, PNG overlays, summary.
  events = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  assert len(events) == 1
  tags = read_event_tags(os.path.join(workdir, events[0]))
  assert {'train/loss', 'test/miou', 'test/fa'} <= tags['scalars']
  assert any(t.startswith('test/input_mask_prediction') for t in tags['images'])
  pngs = os.listdir(os.path.join(workdir, 'predictions', 'final_test'))
  assert len(pngs) == 2 and all(p.endswith('.png') for p in pngs)
  table = pathlib.Path(workdir, 'summary.md').read_text()
  assert '| final | 3 |' in table and 'best miou (chosen on test)' in table
  assert 'Fa (x1e-6)' in table and 'params' in table


def read_event_tags(path):
  """Scalar and image tags of a TensorBoard event file (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = {'scalars': set(), 'images': set()}
  data = pathlib.Path(path).read_bytes()
  offset = 0
  while offset < len(data):
    length = int.from_bytes(data[offset:offset + 8], 'little')
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      tags['images' if value.HasField('image') else 'scalars'].add(value.tag)
  return tags


def test_eval_mode_reproduces_the_logged_best_metrics(trained):
  config, workdir, report = trained
  result = train.evaluate_checkpoint(config, workdir, checkpoint='best')
  assert result['step'] == report['best']['step']
  logged = next(r for r in read_jsonl(workdir)
                if r.get('step') == result['step'] and 'test/miou' in r)
  for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'pd', 'fa', 'auc'):
    np.testing.assert_allclose(result[key], logged[f'test/{key}'], rtol=1e-6, err_msg=key)
  name = f'eval_test_best_step{result["step"]}.json'
  assert json.loads(pathlib.Path(workdir, name).read_text())['metrics']['miou'] == result['miou']


def test_second_evaluation_loads_every_program_from_the_persistent_cache(
    trained, config_file, data_dir, tmp_path):
  """Eval mode twice in new processes with the cache on: the second compiles nothing."""
  _, workdir, _ = trained
  env = {**os.environ, 'JAX_ENABLE_COMPILATION_CACHE': 'true',
         'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'cache'),
         # Tiny programs compile in milliseconds; cache them all here.
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  counts = []
  for _ in range(2):
    done = subprocess.run(
        [sys.executable, '-m', 'irstd_jax.main', f'--config={config_file}', '--mode=eval',
         f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
         '--checkpoint=latest'], cwd=REPO, env=env, capture_output=True, text=True,
        check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (name,) = [p for p in os.listdir(workdir) if p.startswith('eval_test_latest')]
    counts.append(json.loads(pathlib.Path(workdir, name).read_text())['compilation'])
    assert 'XLA programs' in done.stdout
  first, second = counts
  assert first['compiled'] > 0 and first['cache_misses'] == first['compiled']
  assert second['compiled'] == 0 and second['cache_hits'] == first['programs']


def _mixed_size_source():
  """Nine image sizes with seven distinct padded (multiple of 32) shapes."""
  sizes = [(20, 20), (20, 60), (60, 20), (40, 40), (70, 90), (96, 80),
           (90, 40), (30, 90), (64, 64)]
  rng = np.random.default_rng(0)
  return [{'image': rng.integers(0, 256, (h, w, 1), np.uint8),
           'mask': (rng.random((h, w, 1)) > 0.98).astype(np.uint8), 'id': f'image{i}'}
          for i, (h, w) in enumerate(sizes)]


def _reference_probs(model, config, example):
  """The reference's native test: the image alone, zero-padded to 32, batch 1."""
  mean, std = config.input.mean, config.input.std
  image = (example['image'][..., 0].astype(np.float32) - mean) / std
  h, w = image.shape
  padded = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 1), np.float32)
  padded[:h, :w, 0] = image
  model.eval()
  probs = np.asarray(evaluation.predict_probs(model, padded[None]))[0, :h, :w]
  model.train()
  return probs


def test_native_evaluation_pads_each_image_alone_or_into_buckets(config_file, data_dir):
  """Default: each image its own multiple of 32 (7 shapes); max_shapes=2: two."""
  from benchmarks import jax_side  # pylint: disable=g-import-not-at-top
  source = _mixed_size_source()
  padded = {s['id']: (-(-s['image'].shape[0] // 32) * 32, -(-s['image'].shape[1] // 32) * 32)
            for s in source}
  assert len(set(padded.values())) == 7
  mesh = sharding.create_mesh()
  config = resolved(tiny_config(config_file, data_dir))
  assert config.eval.max_shapes == 0  # The reference's protocol is the default.
  model = train.create_model(config)
  model_state = steps.create_state(model, optim.create_optimizer(
      model, config, optim.create_learning_rate_fn(config, 2)), mesh)['model']
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, model_state)
  nnx.update(model, state)
  reference = {s['id']: _reference_probs(model, config, s) for s in source}

  compiled_shapes = set()
  for max_shapes, num_shapes in ((0, 7), (2, 2)):
    config.eval.max_shapes = max_shapes
    evaluator = evaluation.Evaluator(config, source, mesh, train.create_model(config))
    batches = list(evaluator.batches())
    assert len({b['image'].shape for b in batches}) == num_shapes
    assert sorted(i for b in batches for i in b['id'] if i) == sorted(s['id'] for s in source)
    if max_shapes == 0:  # Every image in a batch of its own padded shape.
      assert all(b['image'].shape[1:3] == padded[i] for b in batches for i in b['id'] if i)
    with jax_side.count_compilations() as compiled:
      first = evaluator.run(model_state).metrics
    with jax_side.count_compilations() as recompiled:
      second = evaluator.run(model_state).metrics
    # At most once per shape not compiled before (jax's cache is keyed by
    # shape; earlier cases in this module may have compiled one), never again.
    # The model compiles per image shape, the metrics per canvas (at most
    # METRIC_CANVASES, so that 34 shapes do not exhaust the memory mappings).
    shapes = {b['image'].shape for b in batches}
    canvases = {tuple(b['canvas']) for b in batches}
    assert len(canvases) == min(num_shapes, input_pipeline.METRIC_CANVASES)
    assert 0 < compiled.count('jit(predict_on_canvas)') <= len(shapes - compiled_shapes) or (
        shapes <= compiled_shapes)
    assert compiled.count('jit(update_stats)') <= len(canvases)
    assert recompiled.count('jit(predict_on_canvas)') == 0
    assert recompiled.count('jit(update_stats)') == 0
    compiled_shapes |= shapes
    assert first['miou'] == second['miou'] and first['pd'] == second['pd']
    # The variants (host-side, from padded sharded batches) equal `score` on
    # the same predictions cut to their images.
    examples = evaluator.predict(model_state, len(source))
    scored = metrics.score([e.prob for e in examples], [e.mask for e in examples],
                           pd_fa_thresholds=())
    for key in metrics.variants.KEYS + ('pd', 'fa', 'miou'):
      np.testing.assert_allclose(first[key], scored[key], rtol=1e-6, atol=1e-9, err_msg=key)
    if max_shapes == 0:  # The probabilities of the reference's per-image run.
      for example in examples:
        np.testing.assert_allclose(example.prob, reference[example.id], rtol=1e-5,
                                   atol=1e-6, err_msg=example.id)


def test_cpu_split_evaluation_and_precise_bn_leave_training_alone(
    trained, config_file, data_dir, tmp_path, monkeypatch):
  """`:cpu`'s evaluation: the curve in buckets with statistics from a subset, the end
  per image with statistics from every training image; same weights as a plain run,
  and the checkpoint holds the statistics it scored."""
  config, workdir, _ = trained
  precise = tiny_config(config_file, data_dir)
  precise.eval.every_epochs = 2  # Epoch 2 (the curve) and epoch 3 (the final).
  precise.eval.max_shapes = 1
  precise.eval.final_max_shapes = 0
  precise.eval.precise_bn_images = 2
  precise.eval.final_precise_bn_images = -1
  scored_shapes, calibration_images = [], []
  real = input_pipeline.eval_batches

  def spy(source, **kwargs):
    if kwargs['batch_size'] == 1:  # Precise BN's passes.
      calibration_images.append(len(source))
    else:
      scored_shapes.append(kwargs['max_shapes'])
    return real(source, **kwargs)

  monkeypatch.setattr(input_pipeline, 'eval_batches', spy)
  precise_dir = str(tmp_path / 'precise')
  report = train.train_and_evaluate(precise, precise_dir)
  assert scored_shapes == [1, 0]
  assert calibration_images == [2, 8]  # The tiny training split has 8 images.
  logged = json.loads(pathlib.Path(precise_dir, 'eval_test_final.json').read_text())['metrics']
  assert report['final']['metrics']['miou'] == logged['miou']

  plain, _ = final_state(config, workdir)
  calibrated, _ = final_state(precise, precise_dir)
  plain_leaves = dict(jax.tree_util.tree_flatten_with_path(plain)[0])
  changed = []
  for path, value in jax.tree_util.tree_flatten_with_path(calibrated)[0]:
    if np.array_equal(value, plain_leaves[path]):
      continue
    changed.append(path)
    assert path[0].key == 'model' and path[-1].key in ('mean', 'var'), path
  assert changed  # The statistics were replaced.
  # Recalibrating the saved weights again gives the saved statistics.
  resolved_config = resolved(precise)
  model = train.create_model(resolved_config)
  (train_source,) = train.load_sources(resolved_config, config_lib.splits(resolved_config)[:1])
  mesh = sharding.create_mesh()
  again = precise_bn.recalibrate(
      calibrated['model'], precise_bn.training_batches(resolved_config, train_source),
      graphdef=precise_bn.calibration_graphdef(model), mesh=mesh)
  for path, value in jax.tree_util.tree_flatten_with_path(again)[0]:
    np.testing.assert_allclose(value, dict(jax.tree_util.tree_flatten_with_path(
        calibrated['model'])[0])[path], rtol=1e-5, atol=1e-6, err_msg=str(path))
  # Eval mode scores as the final evaluation does (per image, all images'
  # statistics): the saved statistics as they are, and re-estimated ones for a
  # checkpoint trained without precise BN: the same numbers.
  scored_shapes.clear()
  calibration_images.clear()
  rescored = train.evaluate_checkpoint(precise, precise_dir, checkpoint='latest')
  plain_copy = str(tmp_path / 'plain')  # Eval mode writes into the workdir.
  shutil.copytree(workdir, plain_copy)
  plain_rescored = train.evaluate_checkpoint(precise, plain_copy, checkpoint='latest')
  assert scored_shapes == [0, 0] and calibration_images == [8]
  for key in ('miou', 'niou', 'f1', 'pd', 'fa'):
    np.testing.assert_allclose(logged[key], rescored[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(logged[key], plain_rescored[key], rtol=1e-6, err_msg=key)
  defaults = resolved(tiny_config(config_file, data_dir)).eval  # None: as the curve's.
  assert defaults.final_max_shapes == 0 and defaults.final_precise_bn_images == 0


def test_interrupted_run_resumes_to_the_same_parameters(trained, config_file, data_dir,
                                                        tmp_path, monkeypatch):
  config, workdir, _ = trained
  resumed_dir = str(tmp_path / 'resumed')
  with monkeypatch.context() as patch:
    patch_iterator(patch, at_batch=4, fault='interrupt')  # Mid-epoch 2.
    with pytest.raises(Interrupt):
      train.train_and_evaluate(tiny_config(config_file, data_dir), resumed_dir)
  checkpoints = checkpointing.Checkpoints(os.path.join(resumed_dir, 'checkpoints'))
  assert checkpoints.latest_step() == 2
  checkpoints.close()
  report = train.train_and_evaluate(tiny_config(config_file, data_dir), resumed_dir)
  assert report['steps'] == 6
  expected, _ = final_state(config, workdir)
  got, meta = final_state(config, resumed_dir)
  assert meta['step'] == 6
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  # The best epoch survives the interruption too.
  assert report['best']['step'] in (2, 4, 6)


def test_kill_mid_epoch_loses_at_most_the_checkpoint_interval(trained, config_file, data_dir,
                                                               tmp_path, monkeypatch):
  """Time-based checkpoints inside epochs; a kill during a save; every step logged once."""
  config, workdir, _ = trained
  killed_dir = str(tmp_path / 'killed')
  real_save = checkpointing.Checkpoints.save

  def save_then_die_at_4(self, step, *args, **kwargs):
    if step == 4:  # The end of epoch 2: its train and test records are written.
      raise Interrupt()
    return real_save(self, step, *args, **kwargs)

  every_step = tiny_config(config_file, data_dir)
  every_step.checkpoint.every_minutes = 1e-9  # Due after every step.
  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.Checkpoints, 'save', save_then_die_at_4)
    with pytest.raises(Interrupt):
      train.train_and_evaluate(every_step, killed_dir)
  checkpoints = checkpointing.Checkpoints(os.path.join(killed_dir, 'checkpoints'))
  assert checkpoints.latest_step() == 3  # Mid-epoch 2: only step 4 is lost.
  checkpoints.close()
  report = train.train_and_evaluate(tiny_config(config_file, data_dir), killed_dir)
  assert report['steps'] == 6
  expected, _ = final_state(config, workdir)
  got, _ = final_state(config, killed_dir)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  records = read_jsonl(killed_dir)
  assert [r['step'] for r in records if 'train/loss' in r] == [2, 4, 6]
  assert [r['step'] for r in records if 'test/miou' in r] == [2, 4, 6]
  assert sum('hparams' in r for r in records) == 1
  uninterrupted = [r['train/loss'] for r in read_jsonl(workdir) if 'train/loss' in r]
  assert [r['train/loss'] for r in records if 'train/loss' in r] == uninterrupted


def test_one_and_four_devices_train_the_same_model(config_file, data_dir):
  """Same losses, parameters and batch-norm statistics on 1 and 4 devices.

  With plain SGD: Adam divides by sqrt(v), which turns gradients that are
  pure rounding noise (a conv bias before batch norm has an analytic gradient
  of 0) into steps of +-lr, so its parameters differ by reduction order
  times lr / noise. The sharding under test (global-batch batch norm,
  all-reduced gradients) is the same for every optimizer.
  """
  # (The 4-device step is compiled here once for test_two_processes too.)
  config = resolved(tiny_config(config_file, data_dir, 'optimizer=sgd'))
  assert jax.device_count() == 4, 'conftest.py fakes 4 CPU devices'
  (source,) = train.load_sources(config, ('train',))
  iterator = train.create_train_iterator(config, source)
  batches = [next(iterator) for _ in range(3)]
  iterator.close()
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.create_mesh(devices)
    model = train.create_model(config)
    optimizer = optim.create_optimizer(model, config, optim.create_learning_rate_fn(config, 2))
    train_step, state = steps.make_train_step(model, optimizer, config, mesh)
    losses = []
    for batch in batches:
      state, outputs = train_step(
          state, input_pipeline.shard_batch(batch, sharding.batch_sharded(mesh)))
      losses.append(float(outputs['loss']))
    results.append((losses, jax.tree.map(np.asarray, state)))
  (losses_1, state_1), (losses_4, state_4) = results
  np.testing.assert_allclose(losses_4, losses_1, rtol=1e-6)
  assert losses_1[2] != losses_1[0]  # The steps changed the model.
  # Batch-norm statistics are over the global batch on both meshes.
  def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, state_4['model'], state_1['model'])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    config_file, data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'nan')
  patch_iterator(monkeypatch, at_batch=3, fault='nan')
  with pytest.raises(train.NonFiniteLossError, match=r'at step 3.*last good checkpoint '
                     r'\(step 2\)'):
    train.train_and_evaluate(tiny_config(config_file, data_dir), workdir)
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  assert checkpoints.all_steps() == [2]
  checkpoints.close()


def test_refuses_to_resume_into_another_model(trained, config_file, data_dir):
  _, workdir, _ = trained
  other = tiny_config(config_file, data_dir)
  other.model.options = dict(base_channels=8)
  with pytest.raises(train.IncompatibleWorkdirError, match='another model'):
    train.train_and_evaluate(other, workdir)
  with pytest.raises(train.IncompatibleWorkdirError, match='another model'):
    train.evaluate_checkpoint(other, workdir)


def test_eval_mode_on_a_workdir_without_checkpoints_creates_nothing(config_file, data_dir,
                                                                   tmp_path):
  empty = tmp_path / 'none'
  with pytest.raises(FileNotFoundError, match='No checkpoints in .*train first'):
    train.evaluate_checkpoint(tiny_config(config_file, data_dir), str(empty))
  assert not empty.exists()


def test_save_model_makes_a_workdir_that_eval_predict_and_training_read(
    config_file, data_dir, tmp_path):
  """A model made elsewhere (here: another seed) becomes step 0 of a workdir."""
  from irstd_jax import inference  # pylint: disable=g-import-not-at-top
  config = tiny_config(config_file, data_dir)
  model = train.create_model(resolved(config), seed=7)
  saved = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  workdir = str(tmp_path / 'imported')
  assert train.save_model(model, config, workdir) == 0
  pure, meta = final_state(config, workdir, step=0)
  jax.tree.map(np.testing.assert_array_equal, pure['model'], saved)
  assert meta['epoch'] == 0 and meta['best'] is None
  # Eval mode reads it; without metrics it is the latest checkpoint, not a best one.
  result = train.evaluate_checkpoint(config, workdir, checkpoint='latest')
  assert result['step'] == 0 and result['epoch'] == 0 and np.isfinite(result['miou'])
  with pytest.raises(FileNotFoundError, match="No 'best' checkpoint"):
    train.evaluate_checkpoint(config, workdir, checkpoint='best')
  # Predict reads it: the same parameters, the run's normalisation.
  predictor = inference.Predictor.from_workdir(workdir, checkpoint='latest')
  jax.tree.map(np.testing.assert_array_equal,
               nnx.to_pure_dict(nnx.state(predictor.model, nnx.Param)),
               nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert (predictor.mean, predictor.std) == tuple(resolved(config).input[k]
                                                  for k in ('mean', 'std'))
  # Training on it fine-tunes from step 0: a run of its own, not the seed's.
  report = train.train_and_evaluate(config, workdir)
  assert report['steps'] == 6
  assert [r['step'] for r in read_jsonl(workdir) if 'test/miou' in r] == [2, 4, 6]
  # Refusals: a second save into the workdir, a model of other shapes.
  with pytest.raises(train.IncompatibleWorkdirError, match='already holds'):
    train.save_model(model, config, workdir)
  other = tiny_config(config_file, data_dir)
  other.model.options = dict(base_channels=8)
  with pytest.raises(ValueError, match='does not fit config.model'):
    train.save_model(model, other, str(tmp_path / 'other'))
  # With an evaluation's metrics it is the best checkpoint too.
  best_dir = str(tmp_path / 'best')
  train.save_model(model, config, best_dir, metrics={'miou': result['miou']})
  assert train.evaluate_checkpoint(config, best_dir, checkpoint='best')['step'] == 0


def test_update_ema_ramps_its_decay_and_copies_counters():
  ema = {'w': np.zeros(3, np.float32), 'count': np.array(1, np.int32)}
  weights = {'w': np.ones(3, np.float32), 'count': np.array(5, np.int32)}
  first = steps.update_ema(ema, weights, 0.9, jax.numpy.asarray(0))  # Rate 1/10.
  np.testing.assert_allclose(first['w'], 0.9, rtol=1e-6)
  assert int(first['count']) == 5 and first['w'].dtype == np.float32
  late = steps.update_ema(ema, weights, 0.9, jax.numpy.asarray(1000))  # Rate 0.9.
  np.testing.assert_allclose(late['w'], 0.1, rtol=1e-5)
  with pytest.raises(ValueError, match='ema_decay'):
    steps.ema_decay(_with_ema(1.0))


def _with_ema(decay):
  config = config_lib.base_config()
  config.optimizer.ema_decay = decay
  return config


def test_weight_average_follows_each_step_and_is_what_a_run_scores_and_saves(
    config_file, data_dir, tmp_path, monkeypatch):
  """`optimizer.ema_decay`: the weights' moving average is evaluated, checkpointed,
  resumed exactly, rescored by eval mode and loaded by predict."""
  from irstd_jax import inference  # pylint: disable=g-import-not-at-top
  config = tiny_config(config_file, data_dir)
  config.optimizer.ema_decay = 0.5
  # The step's average against one kept here from each step's weights.
  run_config = resolved(config)
  (source,) = train.load_sources(run_config, ('train',))
  iterator = train.create_train_iterator(run_config, source)
  batches = [next(iterator) for _ in range(3)]
  iterator.close()
  mesh = sharding.create_mesh()
  model = train.create_model(run_config)
  optimizer = optim.create_optimizer(model, run_config,
                                     optim.create_learning_rate_fn(run_config, 2))
  train_step, state = steps.make_train_step(model, optimizer, run_config, mesh)
  expected = jax.tree.map(np.asarray, state['model'])
  for count, batch in enumerate(batches):
    state, _ = train_step(state, input_pipeline.shard_batch(batch, sharding.batch_sharded(mesh)))
    rate = min(0.5, (1 + count) / (10 + count))
    expected = jax.tree.map(lambda e, w, r=rate: r * e + (1 - r) * np.asarray(w),
                            expected, state['model'])
  def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, state['ema'], expected)

  workdir = str(tmp_path / 'averaged')
  train.train_and_evaluate(config, workdir)
  pure, _ = final_state(config, workdir)
  assert set(pure) == {'model', 'opt', 'ema'}
  evaluator = evaluation.Evaluator(run_config, train.load_sources(run_config, ('test',))[0],
                                   mesh, train.create_model(run_config))
  probs = {key: np.concatenate([e.prob.ravel() for e in evaluator.predict(pure[key], 3)])
           for key in ('model', 'ema')}
  assert np.abs(probs['model'] - probs['ema']).max() > 1e-4  # The average is not the model.
  logged = json.loads(pathlib.Path(workdir, 'eval_test_final.json').read_text())['metrics']
  averaged = evaluator.run(pure['ema']).metrics
  rescored = train.evaluate_checkpoint(config, workdir, checkpoint='latest')
  for key in ('miou', 'niou', 'pd', 'fa'):
    np.testing.assert_allclose(logged[key], averaged[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(rescored[key], averaged[key], rtol=1e-6, err_msg=key)
  predictor = inference.Predictor.from_workdir(workdir, checkpoint='latest')
  jax.tree.map(np.testing.assert_array_equal,
               nnx.to_pure_dict(nnx.state(predictor.model)), pure['ema'])
  # Killed mid-epoch 2 and resumed: the same average as the uninterrupted run.
  resumed_dir = str(tmp_path / 'resumed')
  with monkeypatch.context() as patch:
    patch_iterator(patch, at_batch=4, fault='interrupt')
    with pytest.raises(Interrupt):
      train.train_and_evaluate(config, resumed_dir)
  train.train_and_evaluate(config, resumed_dir)
  got, _ = final_state(config, resumed_dir)
  jax.tree.map(np.testing.assert_array_equal, got, pure)
  config.optimizer.ema_decay = 0.0
  with pytest.raises(train.IncompatibleWorkdirError, match='ema_decay'):
    train.train_and_evaluate(config, resumed_dir)


def test_final_size_trains_only_the_last_epochs_on_larger_crops(trained, config_file,
                                                                data_dir, tmp_path, capfd):
  config, workdir, _ = trained
  mixed = tiny_config(config_file, data_dir)
  mixed.input.final_size, mixed.input.final_epochs = 48, 1
  mixed.input.final_positive_crop_probability = 1.0
  train.train_and_evaluate(mixed, str(tmp_path))
  assert 'ETA=' in capfd.readouterr().err  # The bar shows the pixel-weighted ETA.
  losses = [r['train/loss'] for r in read_jsonl(str(tmp_path)) if 'train/loss' in r]
  plain = [r['train/loss'] for r in read_jsonl(workdir) if 'train/loss' in r]
  assert losses[:2] == plain[:2] and losses[2] != plain[2]  # Epoch 3 only.
  _, meta = final_state(config, str(tmp_path))
  assert (meta['input']['final_size'], meta['input']['final_epochs'],
          meta['input']['final_positive_crop_probability']) == (48, 1, 1.0)
  mixed.input.final_epochs = 0
  with pytest.raises(ValueError, match='input.final_epochs in'):
    train.train_and_evaluate(mixed, str(tmp_path / 'refused'))


def test_eta_counts_the_larger_final_crops_by_their_pixels():
  class Sizes:  # Steps 0-5 on 128-pixel crops, 6-9 on 256 (4x the pixels).
    def size_at(self, step):
      return 256 if step >= 6 else 128
  assert train._remaining_seconds(Sizes(), 4, 10, 2.0) == pytest.approx((2 + 4 * 4) / 2)
  assert train._remaining_seconds(Sizes(), 8, 10, 2.0) == pytest.approx(2 / 2)
  assert train._remaining_seconds(object(), 4, 10, 2.0) == pytest.approx(6 / 2)
  assert train._remaining_seconds(Sizes(), 10, 10, 2.0) == 0


def test_bar_leaves_out_tqdms_time_left_when_it_shows_its_own():
  plain, own = train._progress_bar(10, 0, True), train._progress_bar(10, 0, True, own_eta=True)
  for bar in (plain, own):
    bar.update(2)
    bar.set_postfix({'epoch': 1, 'ETA': '0:00:05'}, refresh=False)
  assert '<' in str(plain)  # tqdm's [elapsed<remaining, rate].
  assert '<' not in str(own) and 'ETA=0:00:05' in str(own)
  plain.close()
  own.close()


def test_missing_dataset_says_how_to_get_it(tmp_path):
  config = config_lib.load_config(str(REPO / 'configs' / 'ganet.py'))
  config.dataset.source_dir = str(tmp_path / 'no_such_folder')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(train.DatasetError, match='--config.dataset.source_dir=PATH'):
    train.train_and_evaluate(config, str(tmp_path / 'workdir'))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_together(config_file, data_dir, tmp_path):
  """Two local processes x 2 CPU devices = one 4-device run (SGD, as above)."""
  if not sys.platform.startswith('linux'):
    pytest.skip('jax.distributed on CPU (gloo collectives) is tested on Linux only.')
  workdir = tmp_path / 'two_processes'
  arg = 'optimizer=sgd,epochs=1'  # 2 steps and an evaluation, together.
  port = _free_port()
  procs = []
  for process_id in range(2):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(process_id), JAX_DISABLE_MOST_OPTIMIZATIONS='true',
               JAX_PLATFORMS='cpu')
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'irstd_jax.main', f'--config={config_file}:{arg}',
         f'--config.dataset.data_dir={data_dir}', f'--workdir={workdir}',
         '--config.eval.num_images=0', '--config.eval.num_overlays=0'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail('The two processes did not finish in 400 s.')
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  assert 'on 4 device(s)' in outputs[0]
  # The same run in this process, on its 4 devices, gives the same model.
  config = tiny_config(config_file, data_dir, arg)
  config.eval.num_images = config.eval.num_overlays = 0
  single_dir = str(tmp_path / 'single')
  train.train_and_evaluate(config, single_dir)
  got, meta = final_state(config, str(workdir))
  expected, _ = final_state(config, single_dir)
  assert meta['step'] == 2
  # The evaluation counted every test image once across the two hosts.
  (two,) = [r for r in read_jsonl(str(workdir)) if 'test/miou' in r]
  (one,) = [r for r in read_jsonl(single_dir) if 'test/miou' in r]
  assert two['test/images'] == one['test/images'] == 3
  assert two['test/pixels'] == one['test/pixels']
  assert two['test/miou'] == pytest.approx(one['test/miou'], rel=1e-3)
  def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, got['model'], expected['model'])


# -- Datasets made of parts (SIRST3) ------------------------------------------


class _PartedSplit(list):
  """A split whose examples form named parts, as `datasets.Source.parts` gives them."""

  def __init__(self, parts):
    super().__init__(e for part in parts.values() for e in part)
    self.parts = parts


def test_a_split_of_parts_is_scored_per_part_and_over_all(config_file, data_dir):
  """Each part's metrics are the part scored alone; the whole is every image
  pooled (sums of the parts' statistics), as one list of maps scores."""
  rng = np.random.default_rng(1)
  examples = [{'image': rng.integers(0, 256, (h, 32, 1), np.uint8),
               'mask': (rng.random((h, 32, 1)) > 0.97).astype(np.uint8), 'id': f'image{i}'}
              for i, h in enumerate((32, 30, 64, 32, 50, 20, 32))]  # Two padded shapes.
  parts = {'nuaa_sirst': examples[:3], 'nudt_sirst': examples[3:4],
           'irstd_1k': examples[4:]}
  source = _PartedSplit(parts)
  mesh = sharding.create_mesh()
  config = resolved(tiny_config(config_file, data_dir))
  model = train.create_model(config)
  model_state = steps.create_state(model, optim.create_optimizer(
      model, config, optim.create_learning_rate_fn(config, 2)), mesh)['model']
  evaluator = evaluation.Evaluator(config, source, mesh, model)
  result = evaluator.run(model_state, num_examples=len(source))
  assert list(result.parts) == list(parts)
  for name, part in parts.items():
    alone = evaluation.Evaluator(config, part, mesh, model).run(model_state).metrics
    for key in ('miou', 'niou', 'pd', 'fa', 'f1', 'hiou', 'images', 'targets'):
      np.testing.assert_allclose(result.parts[name][key], alone[key], rtol=1e-6, err_msg=key)
  ids = [e.id for e in result.examples]  # Part by part (by padded shape inside one).
  assert [sorted(ids[:3]), ids[3:4], sorted(ids[4:])] == [
      [e['id'] for e in part] for part in parts.values()]
  scored = metrics.score([e.prob for e in result.examples], [e.mask for e in result.examples],
                         pd_fa_thresholds=())
  for key in ('miou', 'niou', 'pd', 'fa', 'f1', 'hiou', 'images', 'targets'):
    np.testing.assert_allclose(result.metrics[key], scored[key], rtol=1e-6, err_msg=key)
  assert result.metrics['images'] == sum(r['images'] for r in result.parts.values())
  scalars = result.scalars
  assert scalars['miou'] == result.metrics['miou']
  assert scalars['irstd_1k/pd'] == result.parts['irstd_1k']['pd']
  rows = train._with_part_rows([('final', 3, scalars)])  # pylint: disable=protected-access
  assert [r[0] for r in rows] == ['final, all', 'final, nuaa_sirst', 'final, nudt_sirst',
                                  'final, irstd_1k']
  assert rows[2][2]['miou'] == result.parts['nudt_sirst']['miou']


def test_sirst3_run_logs_each_part_and_the_whole(config_file, data_dir, tmp_path):
  """A run on `sirst3` logs test/miou and test/<part>/miou, and its summary has a row per part."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(8)
  root = tmp_path / 'parts'
  layout = {'NUAA-SIRST': ('images', 'masks', 'Misc_', 'img_idx/{}_NUAA-SIRST.txt', (40, 56)),
            'NUDT-SIRST': ('images', 'masks', '00000', '50_50/{}.txt', (32, 32)),
            'IRSTD-1K': ('IRSTD1k_Img', 'IRSTD1k_Label', 'XDU', '{}.txt', (48, 48))}
  for folder, (images, masks, prefix, lists, (h, w)) in layout.items():
    names = [f'{prefix}{i}' for i in range(1, 5)]
    for name in names:
      image = rng.integers(20, 120, (h, w), dtype=np.uint8)
      mask = np.zeros((h, w), np.uint8)
      y, x = rng.integers(3, h - 6), rng.integers(3, w - 6)
      image[y:y + 3, x:x + 3], mask[y:y + 3, x:x + 3] = 250, 255
      for sub, array in ((images, image), (masks, mask)):
        (root / folder / sub).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(array).save(root / folder / sub / f'{name}.png')
    for split, chosen in (('train', names[:2]), ('test', names[2:])):
      path = root / folder / lists.format('trainval' if folder == 'IRSTD-1K' and split == 'train'
                                          else split)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text('\n'.join(chosen))
  config = tiny_config(config_file, data_dir, 'epochs=1')
  config.dataset.name = 'sirst3'
  config.dataset.options = {}
  config.dataset.source_dir = str(root)
  config.dataset.data_dir = str(tmp_path / 'tfds')
  workdir = str(tmp_path / 'run')
  report = train.train_and_evaluate(config, workdir)
  logged = [r for r in read_jsonl(workdir) if 'test/miou' in r][-1]
  for part in ('nuaa_sirst', 'nudt_sirst', 'irstd_1k'):
    assert np.isfinite(logged[f'test/{part}/miou']) and f'test/{part}/pd' in logged
    assert report['final']['metrics'][f'{part}/miou'] == logged[f'test/{part}/miou']
  assert logged['test/images'] == 6
  summary = pathlib.Path(workdir, 'summary.md').read_text()
  assert '| final, all | 1 |' in summary and '| final, irstd_1k | 1 |' in summary
  final = json.loads(pathlib.Path(workdir, 'eval_test_final.json').read_text())
  assert list(final['parts']) == ['nuaa_sirst', 'nudt_sirst', 'irstd_1k']
  assert final['parts']['nudt_sirst']['images'] == 2
