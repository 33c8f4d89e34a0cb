"""TF-free metric writers."""

import json
import os
import sys

import numpy as np

from irstd_jax import metric_writers


def test_writers_need_no_tensorflow_and_write_jsonl_and_events(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_hparams({'lr': 1e-3})
  writer.write_scalars(3, {'loss': np.float32(0.5), 'roc': {'tpr': np.arange(3)},
                           'nan': float('nan')})
  writer.write_images(3, {'panel': np.zeros((8, 24, 1), np.uint8)})
  writer.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[0]) == {'hparams': {'lr': 1e-3}}
  assert json.loads(lines[1]) == {'step': 3, 'loss': 0.5, 'roc': {'tpr': [0, 1, 2]},
                                  'nan': 'nan'}
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  assert 'tensorflow' not in sys.modules
  assert 'clu.metric_writers' not in sys.modules
