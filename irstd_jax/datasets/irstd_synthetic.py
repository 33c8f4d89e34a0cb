"""Procedural IRSTD scenes: the offline dataset of the quick run and notebooks.

No download: images are generated (see `synthetic`) from the config's seed,
so the same config gives the same bytes on every machine with the same
numpy / Pillow. Sizes and counts are config options; every option set gets
its own config name (e.g. `train96_test32_size128-256_seed0`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from irstd_jax.datasets import base
from irstd_jax.datasets import synthetic

_SPLITS = ('train', 'test')


@dataclasses.dataclass
class IrstdSyntheticConfig(tfds.core.BuilderConfig):
  """Counts per split, side lengths drawn in [min_size, max_size], seed."""
  num_train: int = 96
  num_test: int = 32
  min_size: int = 128
  max_size: int = 256
  seed: int = 0
  max_targets: int = 4


_OPTIONS = ('num_train', 'num_test', 'min_size', 'max_size', 'seed',
            'max_targets')


def _config(**options) -> IrstdSyntheticConfig:
  values = {f: IrstdSyntheticConfig.__dataclass_fields__[f].default
            for f in _OPTIONS}
  unknown = set(options) - set(_OPTIONS)
  if unknown:
    raise ValueError(f'irstd_synthetic: unknown options {sorted(unknown)}; '
                     f'use {", ".join(_OPTIONS)}.')
  values.update(options)
  for key, value in values.items():
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f'irstd_synthetic: {key} must be an integer, got '
                       f'{value!r}.')
    values[key] = int(value)
  if values['num_train'] < 1 or values['num_test'] < 0:
    raise ValueError('irstd_synthetic: num_train must be >= 1 and num_test '
                     '>= 0.')
  if not 32 <= values['min_size'] <= values['max_size']:
    raise ValueError('irstd_synthetic: need 32 <= min_size <= max_size, got '
                     f'{values["min_size"]}, {values["max_size"]}.')
  if not 1 <= values['max_targets'] <= 4:
    raise ValueError('irstd_synthetic: max_targets must be 1 to 4.')
  name = (f'train{values["num_train"]}_test{values["num_test"]}_size'
          f'{values["min_size"]}-{values["max_size"]}_seed{values["seed"]}')
  if values['max_targets'] != 4:
    name += f'_targets{values["max_targets"]}'
  return IrstdSyntheticConfig(name=name, **values)


class IrstdSynthetic(base.IrstdBuilder):
  """Synthetic infrared small-target scenes (cloud, ground, sea, clutter).

  Splits: train and test (sizes from the config). Deterministic per seed.
  """

  BUILDER_CONFIGS = [_config()]

  @classmethod
  def make_config(cls, name=None, *, source_dir=None, **options):
    del source_dir
    if name is not None and not options:
      return name
    if name is not None:
      raise ValueError('irstd_synthetic: give either config= or options, '
                       'not both.')
    config = _config(**options)
    for known in cls.BUILDER_CONFIGS:
      if known.name == config.name:
        return known  # TFDS refuses a custom config named like a known one.
    return config

  def _split_generators(self, dl_manager):
    config = self.builder_config
    counts = {'train': config.num_train, 'test': config.num_test}
    self._image_stats, self._resized = {}, {}
    self._splits_left = {s for s in _SPLITS if counts[s]}
    return {split: self._generate_scenes(split, index, counts[split])
            for index, split in enumerate(_SPLITS) if counts[split]}

  def _generate_scenes(self, split: str, split_index: int, count: int):
    config = self.builder_config
    for index in range(count):
      rng = synthetic.scene_rng(config.seed, split_index, index)
      height, width = rng.integers(config.min_size, config.max_size + 1,
                                   size=2)
      image, mask, kind = synthetic.render_scene(
          rng, int(height), int(width), max_targets=config.max_targets)
      example_id = f'{split}_{index:05d}_{kind}'
      values = image.astype(np.float64)
      self._image_stats[example_id] = (float(values.mean()),
                                       float(values.std()))
      yield example_id, base.encode(example_id, image, mask)
    self._finish_split(split, ())
