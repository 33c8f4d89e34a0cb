"""The ROC and Pd-Fa curves of a metrics dict as one PNG, drawn with Pillow.

Two small line charts side by side; Pillow is already a dependency, and the
curves have 5 to 11 points, so a plotting library would add weight for
nothing.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

_SIZE = (440, 380)          # One chart, pixels.
_MARGIN = (56, 40, 36, 44)  # left, top, right, bottom.
_COLOUR = (31, 119, 180)


def _chart(title: str, xlabel: str, ylabel: str, x: np.ndarray, y: np.ndarray,
           labels: Sequence[str]):
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  image = Image.new('RGB', _SIZE, 'white')
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = _MARGIN
  x0, y0, x1, y1 = left, top, _SIZE[0] - right, _SIZE[1] - bottom
  finite = np.isfinite(x) & np.isfinite(y)
  x, y = np.asarray(x, float)[finite], np.asarray(y, float)[finite]
  labels = [l for l, keep in zip(labels, finite) if keep]
  xmax = float(max(x.max(initial=0.0), 1e-12)) * 1.05
  ymax = 1.0

  def at(u, v):
    return x0 + (x1 - x0) * u / xmax, y1 - (y1 - y0) * v / ymax

  draw.rectangle((x0, y0, x1, y1), outline='black')
  for k in range(6):
    v = ymax * k / 5
    _, py = at(0, v)
    draw.line((x0 - 4, py, x0, py), fill='black')
    draw.text((x0 - 34, py - 6), f'{v:.1f}', fill='black')
    u = xmax * k / 5
    px, _ = at(u, 0)
    draw.line((px, y1, px, y1 + 4), fill='black')
    draw.text((px - 14, y1 + 6), f'{u:.3g}', fill='black')  # 4 characters or so
  draw.text((x0, 6), title, fill='black')
  draw.text(((x0 + x1) // 2 - 3 * len(xlabel), y1 + 24), xlabel, fill='black')
  draw.text((8, y0 - 16), ylabel, fill='black')
  order = np.argsort(x, kind='stable')
  points = [at(u, v) for u, v in zip(x[order], y[order])]
  if len(points) > 1:
    draw.line(points, fill=_COLOUR, width=2)
  for (px, py), label in zip(points, [labels[i] for i in order]):
    draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=_COLOUR)
    if label:
      draw.text((px + 4, py - 12), label, fill=(90, 90, 90))
  return image


def save_curves(path: str, result: dict[str, Any], title: str = '') -> None:
  """ROC (TPR against FPR) and Pd against Fa (x1e-6), thresholds labelled."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  roc, curve = result['roc'], result['pd_fa_curve']
  charts = [
      _chart(f'ROC (AUC {result["auc"]:.4f})', 'false positive rate', 'true positive rate',
             np.asarray(roc['fpr']), np.asarray(roc['tpr']),
             [''] * len(roc['thresholds'])),
      _chart('Pd - Fa', 'Fa (x1e-6)', 'Pd', np.asarray(curve['fa']) * 1e6,
             np.asarray(curve['pd']), [f't={t:g}' for t in curve['thresholds']]),
  ]
  header = 24 if title else 0
  canvas = Image.new('RGB', (_SIZE[0] * len(charts), _SIZE[1] + header), 'white')
  if title:
    ImageDraw.Draw(canvas).text((8, 6), title, fill='black')
  for i, chart in enumerate(charts):
    canvas.paste(chart, (i * _SIZE[0], header))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  canvas.save(path)
