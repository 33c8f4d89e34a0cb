"""Learning curves drawn from a run's metrics.jsonl."""

import json

import numpy as np
import pytest

from irstd_jax import curves


def _write_run(tmp_path, records):
  with open(tmp_path / 'metrics.jsonl', 'w', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  return str(tmp_path)


def test_evaluations_land_on_the_epoch_they_follow_and_the_figure_is_written(tmp_path):
  records = [{'hparams': {'a': 1}}]
  records += [{'step': 27 * e, 'epoch': e, 'train/loss': 1.0 / e, 'train/learning_rate': 1e-3}
              for e in range(1, 21)]
  records += [{'step': 27 * e, 'test/miou': 0.01 * e, 'test/fa': 1e-4, 'test/roc': {'tpr': []}}
              for e in (10, 20)]
  records.append({'step': 540, 'final/test/miou': 0.2})  # Not a curve point.
  workdir = _write_run(tmp_path, records)
  loaded = curves.read_records(workdir)
  epochs, miou = curves.series(loaded, 'test/miou')
  np.testing.assert_array_equal(epochs, [10, 20])
  np.testing.assert_allclose(miou, [0.1, 0.2])
  epochs, loss = curves.series(loaded, 'train/loss')
  assert len(epochs) == 20 and loss[0] == 1.0
  assert curves.series(loaded, 'test/roc')[0].size == 0  # Dicts are not scalars.
  out = tmp_path / 'curve.png'
  curves.draw(loaded, str(out), title='t')
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_workdir_without_metrics_is_named_in_the_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    curves.read_records(str(tmp_path / 'nowhere'))
  with pytest.raises(ValueError, match='no train/loss'):
    curves.draw([{'step': 1, 'test/miou': 0.5}], str(tmp_path / 'x.png'))
