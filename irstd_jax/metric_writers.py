"""Metric writers with clu's `MetricWriter` interface and no TensorFlow.

clu 0.0.12's `clu.metric_writers` package imports TensorFlow on import (its
`SummaryWriter`), so it cannot be used here, not even for its interface. These
classes implement the same methods (`write_scalars`, `write_images`, ...,
`flush`, `close`) so that code written against clu's writers works unchanged:
- `TensorBoardWriter`: TensorBoard event files through tensorboardX;
- `JsonlWriter`: one JSON object per write in `metrics.jsonl`;
- `LoggingWriter`: scalars in the absl log;
- `MultiWriter`: fans out to several writers.
`create_default_writer` mirrors clu's function of the same name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np


def _to_scalar(value: Any) -> float | int:
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f'A scalar summary needs one value, got shape {value.shape}.')
  value = value.reshape(()).item()
  return value


def to_json(value: Any) -> Any:
  """Numbers, arrays and nested containers as JSON-friendly values."""
  if isinstance(value, Mapping):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  array = np.asarray(value)
  if array.ndim == 0:
    item = array.item()
    if isinstance(item, float) and not math.isfinite(item):
      return str(item)  # JSON has no NaN/Inf; keep them readable.
    return item
  return to_json(array.tolist())


class MetricWriter:
  """clu's `MetricWriter` interface; every method is a no-op by default."""

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    del step, values, metadata

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    del step, scalars

  def write_images(self, step: int, images: Mapping[str, Any]):
    del step, images

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    del step, videos

  def write_audios(self, step: int, audios: Mapping[str, Any], *,
                   sample_rate: int):
    del step, audios, sample_rate

  def write_texts(self, step: int, texts: Mapping[str, str]):
    del step, texts

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams

  def flush(self):
    pass

  def close(self):
    self.flush()


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files written with tensorboardX (no TensorFlow)."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step, scalars):
    # Non-scalar entries (ROC curves) are left to the JSONL writer.
    for key, value in scalars.items():
      if np.size(value) == 1 and not isinstance(value, Mapping):
        self._writer.add_scalar(key, _to_scalar(value), global_step=step)

  def write_images(self, step, images):
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        value = value[None]
      if value.ndim != 4 or value.shape[-1] not in (1, 3):
        raise ValueError(f'Image summary {key!r} must be [N,] H, W, C with C in '
                         f'(1, 3); got shape {value.shape}.')
      if value.dtype != np.uint8:
        value = np.clip(value, 0.0, 1.0).astype(np.float32)
      self._writer.add_images(key, value, global_step=step, dataformats='NHWC')

  def write_texts(self, step, texts):
    for key, value in texts.items():
      self._writer.add_text(key, value, global_step=step)

  def write_histograms(self, step, arrays, num_buckets=None):
    for key, value in arrays.items():
      bins = (num_buckets or {}).get(key, 'tensorflow')
      self._writer.add_histogram(key, np.asarray(value), global_step=step, bins=bins)

  def write_hparams(self, hparams):
    # As text: TensorBoard's hparams plugin needs a metric list we do not know yet.
    lines = [f'| {k} | {v} |' for k, v in sorted(hparams.items())]
    self._writer.add_text('hparams', '\n'.join(['| name | value |', '|---|---|'] + lines), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class JsonlWriter(MetricWriter):
  """Appends `{"step": s, **scalars}` lines to a JSON-lines file.

  Non-scalar values (ROC curves) are written as lists, so the file holds
  everything `metrics.compute` returns; a resumed run appends to it.
  """

  def __init__(self, path: str, *, resume_step: int | None = None):
    self._path = path
    if resume_step is not None and os.path.exists(path):
      _drop_records_after(path, resume_step)
    self._file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_scalars(self, step, scalars):
    record = {'step': int(step), **{k: to_json(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + '\n')

  def write_hparams(self, hparams):
    self._file.write(json.dumps({'hparams': to_json(dict(hparams))}) + '\n')

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites a metrics.jsonl without the records of steps after `step`.

  A resumed run repeats the steps after its checkpoint; their first records
  go, so that every step appears once. The file is replaced atomically.
  """
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  kept = [line for line in lines
          if not line.strip() or json.loads(line).get('step', -1) <= step]
  if len(kept) != len(lines):
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)


class LoggingWriter(MetricWriter):
  """Scalars and hyper-parameters in the absl log."""

  def write_scalars(self, step, scalars):
    values = ', '.join(f'{k}={_format(v)}' for k, v in sorted(scalars.items())
                       if not isinstance(v, Mapping))
    logging.info('[%d] %s', step, values)

  def write_hparams(self, hparams):
    logging.info('Hyper-parameters: %s', dict(hparams))


def _format(value: Any) -> str:
  array = np.asarray(value)
  if array.size == 1 and np.issubdtype(array.dtype, np.number):
    return f'{array.item():.6g}'
  return f'<{array.shape}>'


class MultiWriter(MetricWriter):
  """Writes to every writer in `writers`; scalars-only writers skip the rest."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_summaries(self, step, values, metadata=None):
    for w in self._writers:
      w.write_summaries(step, values, metadata)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self._writers:
      w.write_images(step, images)

  def write_videos(self, step, videos):
    for w in self._writers:
      w.write_videos(step, videos)

  def write_audios(self, step, audios, *, sample_rate):
    for w in self._writers:
      w.write_audios(step, audios, sample_rate=sample_rate)

  def write_texts(self, step, texts):
    for w in self._writers:
      w.write_texts(step, texts)

  def write_histograms(self, step, arrays, num_buckets=None):
    for w in self._writers:
      w.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_default_writer(logdir: str, *, just_logging: bool = False,
                          jsonl_name: str = 'metrics.jsonl',
                          resume_step: int | None = None) -> MetricWriter:
  """Log + TensorBoard + metrics.jsonl in `logdir` (only logging if just_logging).

  Pass `just_logging=jax.process_index() > 0` so that one host writes files,
  and `resume_step` when a run resumes from that step (see JsonlWriter).
  """
  if just_logging:
    return LoggingWriter()
  os.makedirs(logdir, exist_ok=True)
  return MultiWriter([LoggingWriter(), TensorBoardWriter(logdir),
                      JsonlWriter(os.path.join(logdir, jsonl_name), resume_step=resume_step)])
