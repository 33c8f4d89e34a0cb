"""Sweeps: stacked seeds equal solo runs; a sweep resumes, isolates failures, reports.

The in-process cases use test_train's tiny U-Net config (compiled once per
module); the command-line case runs a real `:quick` sweep file on 4 fake CPU
devices, kills it and reruns it.
"""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import numpy as np
import pytest

from irstd_jax import checkpointing
from irstd_jax import config_lib
from irstd_jax import models
from irstd_jax import train
from irstd_jax.sweeps import runner
from irstd_jax.sweeps import spec
from irstd_jax.sweeps import table

sys.path.insert(0, os.path.dirname(__file__))
import test_train  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


# test_train's module fixture: less XLA optimisation for these tiny steps.
fast_compilation = test_train.fast_compilation


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """The tiny config, 2 epochs, no overlays."""
  directory = tmp_path_factory.mktemp('tiny')
  path = directory / 'tiny.py'
  path.write_text(test_train.TINY_CONFIG)
  config = test_train.tiny_config(path, str(directory / 'tfds'), 'epochs=2')
  config.eval.num_overlays = 0
  return config


def _restore(workdir):
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'))
  step = checkpoints.latest_step()
  path = os.path.join(checkpoints.directory, str(step), 'state')
  checkpoints.close()
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.StandardCheckpointer().restore(path)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r]


def test_stacked_seeds_equal_their_solo_runs(tiny, tmp_path):
  # SGD: Adam turns the float32 noise of zero gradients (a conv bias before batch
  # norm) into steps of the learning rate, which would hide a real difference.
  tiny = tiny.copy_and_resolve_references()
  tiny.optimizer.name, tiny.optimizer.learning_rate = 'sgd', 0.1
  tiny.schedule.decay_epochs = ()
  stacked = train.train_seeds(tiny, {1: str(tmp_path / 's1'), 2: str(tmp_path / 's2')})
  for i, seed in enumerate((1, 2)):
    config = tiny.copy_and_resolve_references()
    config.seed = seed
    solo = train.train_and_evaluate(config, str(tmp_path / f'solo{seed}'))
    # Same initialisation and batches: the states differ by float32 reduction order only.
    for a, b in zip(jax.tree.leaves(_restore(str(tmp_path / f'solo{seed}'))),
                    jax.tree.leaves(_restore(str(tmp_path / f's{seed}')))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_losses(str(tmp_path / f's{seed}')),
                               _losses(str(tmp_path / f'solo{seed}')), rtol=1e-5)
    for key in ('miou', 'niou', 'pd', 'fa', 'f1'):
      np.testing.assert_allclose(stacked[i]['final']['metrics'][key],
                                 solo['final']['metrics'][key], rtol=1e-2, atol=1e-6)
    # Each stacked seed's workdir is an ordinary run: eval mode reads it.
    assert os.path.exists(tmp_path / f's{seed}' / 'summary.md')
  # The two seeds really differ (each got its own initialisation and data order).
  assert _losses(str(tmp_path / 's1')) != _losses(str(tmp_path / 's2'))


def _tiny_sweep(tiny, rows, seeds=(0, 1)):
  return spec.Sweep('tiny table', tiny, rows, seeds,
                    paper={rows[0].name: dict(miou=50.0)})


def test_failed_trials_do_not_stop_the_others_and_are_retried(tiny, tmp_path):
  good = spec.row('good')
  bad = spec.row('bad', model__options__no_such_option=1)  # Fails when built.
  sweep = _tiny_sweep(tiny, [good, bad], seeds=(0,))
  errors = runner.run(sweep, str(tmp_path), show_progress=False)
  assert len(errors) == 1 and errors[0].startswith('bad seeds [0]:')
  state = runner.status(sweep, str(tmp_path))
  assert state['done'] == [('good', 0)] and state['failed'] == [('bad', 0)]
  assert 'Traceback' in (tmp_path / 'bad' / 'console.log').read_text()
  table.write(sweep, str(tmp_path))  # A table of what finished, at any time.
  assert '1 of 2 trials finished' in (tmp_path / 'table.md').read_text()
  finished = (tmp_path / 'good' / 'seed_0' / runner.TRIAL_FILE).stat().st_mtime_ns
  # Fixed and rerun: only the failed row trains again.
  fixed = _tiny_sweep(tiny, [good, spec.row('bad', model__options__base_channels=4)],
                      seeds=(0,))
  assert runner.run(fixed, str(tmp_path), show_progress=False) == []
  assert (tmp_path / 'good' / 'seed_0' / runner.TRIAL_FILE).stat().st_mtime_ns == finished
  assert len(runner.status(fixed, str(tmp_path))['done']) == 2


def test_workers_split_the_units_and_the_table_reads_every_trial(tiny, tmp_path):
  rows = [spec.row('a'), spec.row('b', optimizer__learning_rate=3e-3)]
  sweep = _tiny_sweep(tiny, rows)
  all_units = runner.units(sweep, stack_seeds=False)
  shares = [runner.share(all_units, w, 3) for w in range(3)]
  assert sorted((u.row.name, u.seeds) for s in shares for u in s) == sorted(
      (u.row.name, u.seeds) for u in all_units)
  for worker in range(3):  # Three machines, one after another here.
    runner.run(sweep, str(tmp_path), worker=worker, num_workers=3, stack_seeds=False,
               show_progress=False)
  table.write(sweep, str(tmp_path))
  with open(tmp_path / 'table.csv', encoding='utf-8') as f:
    records = list(csv.DictReader(f))
  for record in records:
    r = next(x for x in rows if x.name == record['row'])
    for key, _, scale in table.COLUMNS:
      values = [runner.read_trial(spec.trial_dir(str(tmp_path), r, s))[record['protocol']]
                ['metrics'][key] * scale for s in (0, 1)]
      assert float(record[f'{key}_mean']) == pytest.approx(np.mean(values), rel=1e-12)
      assert float(record[f'{key}_std']) == pytest.approx(np.std(values, ddof=1), rel=1e-9)
  md = (tmp_path / 'table.md').read_text()
  assert '| a | 2 |' in md and 'mIoU 50' in md and '## Best epoch' in md
  assert (tmp_path / 'table.png').stat().st_size > 10_000


def test_sweep_files_load_with_their_rows():
  for path, rows in (('ganet_table2.py', 4), ('ganet_dilations.py', 3),
                     ('gglnet_table1.py', 6), ('gglnet_table2.py', 3),
                     ('gglnet_table3.py', 4), ('gglnet_ratio.py', 5)):
    for arg in ('', ':quick'):
      sweep = spec.load(str(REPO / 'configs' / 'sweeps' / path) + arg)
      assert len(sweep.rows) == rows and sweep.seeds == (0, 1, 2)
      assert (sweep.base.dataset.name == 'irstd_synthetic') == bool(arg)
  with pytest.raises(ValueError, match="no field 'model.optionz.x'"):
    spec.Sweep('t', spec.load(str(REPO / 'configs/sweeps/ganet_table2.py')).base,
               [spec.row('x', model__optionz__x=1)])


QUICK = 'configs/sweeps/ganet_table2.py:quick,rows=2,seeds=2,epochs=2'
# 16 training images: 4 steps per epoch. The second run reads its compiled
# programs from the first's persistent cache.
# Without GradFormer (the slowest to compile) both rows are cheap U-Nets.
SETTINGS = ('--set=dataset.options.num_train=16', '--set=dataset.options.num_test=4',
            '--set=model.options.use_gradformer=False')


def test_every_sweep_row_builds_its_model():
  built = set()
  for path in sorted((REPO / 'configs' / 'sweeps').glob('*.py')):
    sweep = spec.load(str(path))
    for r in sweep.rows:  # Abstractly (nothing computed), each distinct model once.
      options = {k: 64 if v == 'train_size' else v
                 for k, v in spec.config_for(sweep, r, 0).model.options.items()}
      key = (sweep.base.model.name, repr(sorted(options.items())))
      if key not in built:
        built.add(key)
        nnx.eval_shape(lambda: models.build(sweep.base.model.name, rngs=nnx.Rngs(0), **options))  # pylint: disable=cell-var-from-loop


def _sweep_command(workdir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(workdir.parent / 'xla_cache'))
  return subprocess.Popen(
      [sys.executable, '-m', 'irstd_jax.sweep', f'--sweep={QUICK}', *SETTINGS,
       '--stack_seeds=yes', f'--workdir={workdir}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def test_quick_sweep_on_four_devices_survives_a_kill(tmp_path):
  workdir = tmp_path / 'sweep'
  process = _sweep_command(workdir)
  deadline = time.time() + 600
  # Killed once both seeds of a row have a finished checkpoint at the same step
  # (mid-training: 2 epochs; orbax writes into a temporary folder and renames
  # it to the step when done). Killed between the two seeds' saves, the seeds
  # would resume one by one, at different steps, instead of stacked.
  def saved():
    steps = {}
    for p in workdir.glob('*/seed_*/checkpoints/*'):
      if p.name.isdigit():
        steps.setdefault(p.parents[2], {}).setdefault(p.parents[1].name, set()).add(p.name)
    return [row for row, seeds in steps.items()
            if len(seeds) == 2 and set.intersection(*seeds.values())]

  while not saved() and time.time() < deadline:
    if process.poll() is not None:
      break
    time.sleep(0.5)
  assert process.poll() is None, process.stdout.read()
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not list(workdir.glob('*/seed_*/trial.json'))  # Nothing had finished.
  process = _sweep_command(workdir)
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output
  assert '4 done, 0 failed, 0 started, 0 new trials.' in output
  logs = ''.join(p.read_text() for p in workdir.glob('*/console.log'))
  assert 'resuming at step 4' in logs  # The killed rows continued from their checkpoints.
  sweep = spec.load(str(REPO / QUICK))
  records = {(r.name, s): runner.read_trial(spec.trial_dir(str(workdir), r, s))
             for r in sweep.rows for s in sweep.seeds}
  # Both rows ran at once, each on its own device, to the end (step 8 of 2 epochs).
  assert len({tuple(x['devices']) for x in records.values()}) == 2
  for (name, seed), record in records.items():
    assert record['final']['step'] == 8 and record['stacked_with'] == [0, 1]
    # The table's cells are the trials' own metrics (summary.md of each run).
    with open(os.path.join(spec.trial_dir(str(workdir), spec.row(name), seed),
                           'metrics.jsonl'), encoding='utf-8') as f:
      logged = [json.loads(line) for line in f]
    assert any(r.get('final/test/miou') == record['final']['metrics']['miou'] for r in logged)
  entry = table.rows(sweep, str(workdir), 'final')[0]
  values = [records[(sweep.rows[0].name, s)]['final']['metrics']['miou'] * 100 for s in (0, 1)]
  assert entry['miou'] == pytest.approx((np.mean(values), np.std(values, ddof=1)))
  assert (workdir / 'table.md').exists() and (workdir / 'table.png').exists()


def test_cpu_crops_sweep_trials_are_the_readme_cpu_run_per_share_and_seed():
  sweep = spec.load(str(REPO / 'configs' / 'sweeps' / 'ganet_cpu_crops.py') + ':seeds=2')
  assert sweep.seeds == (0, 1)
  cpu = config_lib.load_config(str(REPO / 'configs' / 'ganet.py'), 'cpu')
  for r, share in zip(sweep.rows, (0.5, 0.7, 0.8), strict=True):
    expected = cpu.copy_and_resolve_references()
    expected.input.positive_crop_probability = share
    expected.eval.precise_bn_images = 64
    expected.eval.final_precise_bn_images = -1
    expected.seed = 1
    assert spec.config_for(sweep, r, 1).to_dict() == expected.to_dict(), r.name
