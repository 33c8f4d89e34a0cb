"""What an evaluation reports: scalar metrics, the results table, prediction overlays."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from irstd_jax.evaluation import pictures

# Metric key, column title and scale (the field's units: percent, and Fa in
# false-alarm pixels per million).
TABLE_COLUMNS = (('miou', 'mIoU', 100), ('niou', 'nIoU', 100), ('f1', 'F1', 100),
                 ('pd', 'Pd', 100), ('fa', 'Fa (x1e-6)', 1e6), ('hiou', 'hIoU', 100))


@dataclasses.dataclass
class Example:
  """One evaluated image with its prediction, for pictures."""
  id: Any
  image: np.ndarray
  mask: np.ndarray
  prob: np.ndarray
  valid: np.ndarray

  @classmethod
  def crop(cls, image_id, batch: dict[str, Any], index: int, prob: np.ndarray) -> 'Example':
    """Entry `index` of an eval batch, cut to its valid pixels (no padding kept)."""
    valid = np.asarray(batch['valid'][index])
    rows, cols = pictures.valid_box(valid)
    return cls(image_id, np.asarray(batch['image'][index])[rows, cols],
               np.asarray(batch['mask'][index])[rows, cols],
               np.asarray(prob)[rows, cols], valid[rows, cols])


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
  """The scalar entries of a metrics dict as floats (ROC curves left out)."""
  out = {}
  for key, value in result.items():
    array = np.asarray(value)
    if array.size == 1 and np.issubdtype(array.dtype, np.number):
      out[key] = float(array.reshape(()))
  return out


def results_table(rows: list[tuple[str, int | None, dict[str, float]]],
                  num_params: int) -> str:
  """A markdown table with one row per (label, epoch, metrics)."""
  header = ['checkpoint', 'epoch'] + [title for _, title, _ in TABLE_COLUMNS] + ['params']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for label, epoch, result in rows:
    cells = [label, '-' if epoch is None else str(epoch)]
    for key, _, scale in TABLE_COLUMNS:
      value = result.get(key)
      cells.append('-' if value is None else f'{value * scale:.2f}')
    cells.append(f'{num_params / 1e6:.3f} M')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def metrics_line(result: dict[str, float]) -> str:
  """'mIoU 12.34  nIoU ...' for console lines."""
  return '  '.join(f'{title.split()[0]} {result[key] * scale:.2f}'
                   for key, title, scale in TABLE_COLUMNS if key in result)


def write_overlays(examples: list[Example], directory: str, threshold: float) -> None:
  """One PNG per example: hits green, false alarms red, misses yellow.

  Small images are enlarged (nearest) to a readable size, with a legend.
  """
  for example in examples:
    name = pictures.safe_name(example.id)
    pictures.save_png(
        os.path.join(directory, f'{name}.png'),
        pictures.readable(pictures.overlay(example.image, example.mask, example.prob,
                                           example.valid, threshold)))


def write_summary(path: str, title: str, table: str) -> None:
  """The run's summary.md: the results table and how to read it."""
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'# {title}\n\n{table}\n\nmIoU, nIoU, F1, Pd in percent; Fa in '
            'false-alarm pixels per million; hIoU (OPDC matching, '
            'docs/metrics_variants.md) in percent. "best" is chosen on the split it is '
            'reported on, as the GaNet and GGL-Net codes do; "final" is the last '
            'epoch (BasicIRSTD).\n')
