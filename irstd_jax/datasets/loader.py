"""`load`: one line from a dataset name to examples, building on first use."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import sys
import time
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds

from irstd_jax.datasets import base
from irstd_jax.datasets import irstd_1k
from irstd_jax.datasets import irstd_folder
from irstd_jax.datasets import irstd_synthetic
from irstd_jax.datasets import nudt_sirst
from irstd_jax.datasets import sirst3
from irstd_jax.datasets import sirst_v1
from irstd_jax.datasets import sirst_v2

DATA_DIR_ENV = 'IRSTD_DATA_DIR'

# TFDS's messages that say nothing about local data (it is built from local
# folders, has no download size, has custom configs by design, and reads PNGs
# with PIL, which is fast enough at these sizes).
_TFDS_NOISE = ('Using custom data configuration', 'has no dataset_info.json',
               'OpenCV is not installed', 'Downloading and preparing dataset',
               'Dataset {} downloaded and prepared', 'Generating splits')


class _DropTfdsNoise(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _TFDS_NOISE)


for _name in ('absl', 'tensorflow_datasets'):
  logging.getLogger(_name).addFilter(_DropTfdsNoise())


@contextlib.contextmanager
def _building(dataset: base.IrstdBuilder):
  """Two lines instead of TFDS's prints and progress bars while a dataset builds."""
  name = f'{dataset.name}/{dataset.builder_config.name if dataset.builder_config else ""}'
  print(f'Building {name} into {dataset.data_dir} (once)...', file=sys.stderr, flush=True)
  start = time.monotonic()
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
  print(f'Built {name} in {time.monotonic() - start:.0f} s.', file=sys.stderr, flush=True)


class MissingSplitError(ValueError):
  """The dataset was built but has no split of that name."""


def default_data_dir() -> str:
  """$IRSTD_DATA_DIR, else TFDS's default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets)."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser(
      tfds.core.constants.DATA_DIR)


def _registry() -> dict[str, type[base.IrstdBuilder]]:
  return {cls.name: cls for cls in (
      sirst_v1.SirstV1, nudt_sirst.NudtSirst, irstd_1k.Irstd1k,
      sirst3.Sirst3, sirst_v2.SirstV2, irstd_folder.IrstdFolder,
      irstd_synthetic.IrstdSynthetic)}


def names() -> list[str]:
  return list(_registry())


def builder(name: str, *, source_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None,
            **config: Any) -> base.IrstdBuilder:
  """The TFDS builder of an IRSTD dataset (not prepared yet).

  Args:
    name: one of `names()`.
    source_dir: folder with the raw dataset (the TFDS manual dir).
    data_dir: where the TFDS files go (default: `default_data_dir()`).
    **config: `config='name'` picks a named config; other keys are options of
      configurable builders (irstd_synthetic sizes / counts / seed,
      irstd_folder mask_suffix / high_bit_depth, nudt_sirst split_dir).
  """
  registry = _registry()
  if name not in registry:
    raise ValueError(f'Unknown dataset {name!r}; known: {sorted(registry)}.')
  cls = registry[name]
  config_name = config.pop('config', None)
  builder_config = cls.make_config(config_name, source_dir=source_dir,
                                   **config)
  return cls(config=builder_config,
             data_dir=str(data_dir or default_data_dir()),
             source_dir=source_dir, file_format='array_record')


def prepare(name: str, *, source_dir=None, data_dir=None, **config
            ) -> base.IrstdBuilder:
  """Builds the dataset's TFDS files unless they exist; returns the builder."""
  dataset = builder(name, source_dir=source_dir, data_dir=data_dir, **config)
  if not dataset.is_prepared():
    manual = str(pathlib.Path(source_dir).expanduser()) if source_dir else None
    with _building(dataset):
      dataset.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return dataset


class Source(Sequence):
  """Random access to one split: `len`, `[i]`, iteration, of example dicts.

  Each example: `image` uint8 (H, W, 1), `mask` uint8 (H, W, 1) in {0, 1},
  `id` str, `num_targets` int (8-connected components of the mask) and
  `boxes` int32 (num_targets, 4) as (ymin, xmin, ymax, xmax), max exclusive.

  Attributes:
    name: the dataset name (e.g. 'sirst_v1'), which the input pipeline uses to
      pick per-dataset defaults.
    config: the builder config name.
    split: the split.
    mean_std: (mean, std) of the grey levels over the whole dataset (mean of
      per-image means and stds, every image once), computed when building.
    parts: for a dataset made of parts (sirst3), part name -> the `Part` of
      this split holding its examples (in order, together all of them);
      empty otherwise, and for split expressions ('test[:10]').
  """

  def __init__(self, data_source, *, name: str, config: str | None,
               split: str, metadata):
    self._data = data_source
    self.name = name
    self.config = config
    self.split = split
    stats = (metadata or {}).get('mean_std')
    self.mean_std = tuple(stats) if stats else None
    self.resized_masks = list((metadata or {}).get('resized_masks', []))
    self.parts: dict[str, Part] = {}
    start = 0
    for part, size in ((metadata or {}).get('parts') or {}).get(str(split), []):
      self.parts[part] = Part(self, part, start, start + int(size))
      start += int(size)
    if self.parts and start != len(self):
      raise ValueError(f'{name}/{split}: its parts hold {start} examples, the split '
                       f'{len(self)}: rebuild the dataset.')

  def __len__(self) -> int:
    return len(self._data)

  @staticmethod
  def _clean(example: dict) -> dict:
    example = dict(example)
    if isinstance(example['id'], bytes):
      example['id'] = example['id'].decode('utf-8')
    example['num_targets'] = int(example['num_targets'])
    return example

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'{self.name}/{self.split}: index {index} out of range '
                       f'(length {len(self)}).')
    return self._clean(self._data[index])

  def __getitems__(self, indices) -> list[dict]:
    indices = [int(i) for i in indices]
    return [self._clean(e) for e in self._data.__getitems__(indices)]

  def __iter__(self) -> Iterator[dict]:
    chunk = 64
    for start in range(0, len(self), chunk):
      yield from self.__getitems__(range(start, min(start + chunk, len(self))))

  def __repr__(self) -> str:
    return (f'Source({self.name}/{self.config}, split={self.split!r}, '
            f'len={len(self)})')


class Part(Sequence):
  """The examples [start, stop) of a `Source` that form one part (e.g. NUAA-SIRST
  in SIRST3's test split); a source of its own (`len`, `[i]`, iteration).

  Attributes:
    name, config, mean_std: the whole dataset's.
    part: the part's name ('nuaa_sirst').
    split: '<split>/<part>'.
  """

  def __init__(self, source: Source, part: str, start: int, stop: int):
    self._source = source
    self.part = part
    self.start, self.stop = start, stop
    self.name, self.config, self.mean_std = source.name, source.config, source.mean_std
    self.split = f'{source.split}/{part}'
    self.parts: dict[str, 'Part'] = {}

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'{self.name}/{self.split}: index {index} out of range '
                       f'(length {len(self)}).')
    return self._source[self.start + index]

  def __getitems__(self, indices) -> list[dict]:
    return self._source.__getitems__([self.start + int(i) for i in indices])

  def __iter__(self) -> Iterator[dict]:
    chunk = 64
    for start in range(0, len(self), chunk):
      yield from self.__getitems__(range(start, min(start + chunk, len(self))))

  def __repr__(self) -> str:
    return f'Part({self.name}/{self.split}, [{self.start}, {self.stop}))'


def load(name: str, split: str, *, source_dir=None, data_dir=None,
         **config) -> Source:
  """Loads one split of an IRSTD dataset, building it on first use.

  Args:
    name: 'sirst_v1', 'nudt_sirst', 'irstd_1k', 'sirst3', 'sirst_v2',
      'irstd_folder' or 'irstd_synthetic'.
    split: a split of the source ('train', 'test', ...), or any TFDS split
      expression over them ('trainval+test', 'train[:10]').
    source_dir: folder with the raw dataset; needed the first time for the
      manual-download datasets (see datasets/README.md) and always for
      irstd_folder. Not needed once built, except for irstd_folder.
    data_dir: where the built TFDS files live; default `$IRSTD_DATA_DIR` or
      TFDS's default (~/tensorflow_datasets).
    **config: `config='basicirstd'` etc., or builder options (see `builder`).

  Returns:
    A `Source` (random access, numpy examples, no TensorFlow).
  """
  dataset = prepare(name, source_dir=source_dir, data_dir=data_dir, **config)
  available = list(dataset.info.splits)
  base_splits = {part.split('[')[0].strip()
                 for part in str(split).split('+')}
  unknown = sorted(s for s in base_splits if s not in available)
  if unknown:
    raise MissingSplitError(
        f'{name}/{dataset.builder_config.name if dataset.builder_config else ""}'
        f' has no split {unknown}; its splits: {available}.')
  return Source(dataset.as_data_source(split), name=name,
                config=dataset.builder_config.name
                if dataset.builder_config else None,
                split=str(split), metadata=dataset.info.metadata)
