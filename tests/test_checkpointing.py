"""Checkpoints: preservation of the latest and the best, restore."""

import numpy as np

from irstd_jax import checkpointing


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
  ckpts = checkpointing.Checkpoints(str(tmp_path), keep=1)
  mious = {1: 0.1, 2: None, 3: 0.5, 4: 0.2, 5: None}
  for step, miou in mious.items():
    ckpts.save(step, {'w': np.full(3, step, np.float32)}, {'step': step},
               metrics=None if miou is None else {'miou': miou})
    ckpts.wait()
  assert ckpts.all_steps() == [3, 5]
  assert ckpts.best_step() == 3 and ckpts.resolve('latest') == 5
  restored, meta = ckpts.restore(3, {'w': np.zeros(3, np.float32)})
  np.testing.assert_array_equal(restored['w'], 3)
  assert meta == {'step': 3}
  ckpts.close()


def test_relative_directories_work(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ckpts = checkpointing.Checkpoints('relative/checkpoints')
  ckpts.save(1, {'w': np.ones(2, np.float32)}, {'step': 1})
  ckpts.close()
  assert (tmp_path / 'relative' / 'checkpoints' / '1').is_dir()
