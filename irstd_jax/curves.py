r"""Learning curves of a training run, drawn from its `metrics.jsonl`.

  python -m irstd_jax.curves --workdir=workdirs/ganet_cpu --out=curve.png

Left: the epoch-mean training loss (and the learning rate on a second axis).
Right: the test metrics at every evaluation (mIoU, nIoU, Pd, and Fa on its
own log axis). Epochs are read off the training records' step / epoch, so
the evaluations land on the epoch they were made after.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run\'s workdir.')
_OUT = flags.DEFINE_string('out', None, 'The PNG to write (default WORKDIR/curves.png).')
_SPLIT = flags.DEFINE_string('split', 'test', 'The evaluated split to draw.')
_TITLE = flags.DEFINE_string('title', None, 'Title (default: the workdir\'s name).')


def read_records(workdir: str) -> list[dict]:
  """The records of `workdir`/metrics.jsonl, with a clear error if absent."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: --workdir must be a training run\'s '
                            'directory (the one holding checkpoints/ and metrics.jsonl).')
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, values) of every record that has `key`, in step order.

  Epochs come from the training records (`epoch` next to `step`); a record
  without its own epoch gets step / steps-per-epoch.
  """
  per_epoch = [r['step'] / r['epoch'] for r in records
               if 'epoch' in r and r.get('epoch') and 'step' in r]
  steps_per_epoch = float(np.median(per_epoch)) if per_epoch else 1.0
  points = sorted((r['step'], r.get('epoch', r['step'] / steps_per_epoch), r[key])
                  for r in records if key in r and isinstance(r[key], (int, float)))
  if not points:
    return np.zeros(0), np.zeros(0)
  _, epochs, values = zip(*points)
  return np.asarray(epochs, float), np.asarray(values, float)


def draw(records: Sequence[dict], path: str, split: str = 'test', title: str = '') -> None:
  """Writes the two-panel figure to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  epochs, loss = series(records, 'train/loss')
  if not len(epochs):
    raise ValueError('metrics.jsonl has no train/loss records: nothing to draw.')
  fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
  loss_ax.plot(epochs, loss, color='#1f77b4', label='training loss (epoch mean)')
  loss_ax.set(xlabel='epoch', ylabel='loss', title='training', ylim=(0, None))
  lr_ax = loss_ax.twinx()
  lr_epochs, lr = series(records, 'train/learning_rate')
  lr_ax.plot(lr_epochs, lr, color='#7f7f7f', linestyle='--', label='learning rate')
  lr_ax.set_ylabel('learning rate', color='#7f7f7f')
  handles = loss_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
  loss_ax.legend(handles=handles, fontsize=8, loc='upper right')
  for name, label in (('miou', 'mIoU'), ('niou', 'nIoU'), ('pd', 'Pd'), ('f1', 'F1')):
    e, v = series(records, f'{split}/{name}')
    if len(e):
      eval_ax.plot(e, 100 * v, marker='o', label=label)
  eval_ax.set(xlabel='epoch', ylabel='%', title=f'{split} split (threshold 0.5)',
              ylim=(0, 100), xlim=(0, max(epochs) + 1))
  eval_ax.grid(alpha=0.3)
  e, fa = series(records, f'{split}/fa')
  if len(e):
    fa_ax = eval_ax.twinx()
    fa_ax.semilogy(e, 1e6 * fa, color='#d62728', marker='x', linestyle=':', label='Fa')
    fa_ax.set_ylabel('Fa (1e-6, log)', color='#d62728')
    handles = eval_ax.get_legend_handles_labels()[0] + fa_ax.get_legend_handles_labels()[0]
  else:
    handles = eval_ax.get_legend_handles_labels()[0]
  eval_ax.legend(handles=handles, fontsize=8, loc='lower right')
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError('--workdir is required.')
  out = _OUT.value or os.path.join(workdir, 'curves.png')
  title = _TITLE.value if _TITLE.value is not None else os.path.basename(
      os.path.normpath(workdir))
  draw(read_records(workdir), out, _SPLIT.value, title)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
