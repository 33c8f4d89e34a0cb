"""What runs need to know about each dataset, without TFDS.

The builders turn raw folders into TFDS files; this table holds the
constants around them that configs and the training recipes read before any
data is loaded: each config's splits, the splits a run trains and tests on
by default, BasicIRSTD's normalisation constants and the side shared by all
images of a dataset. Importing it is cheap (no TFDS, no numpy).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Splits:
  """The splits of one builder config and the two a run uses by default.

  Attributes:
    train: the default training split.
    test: the default evaluation split.
    names: every split, in the builder's order; None where the source's own
      list files name them (sirst_v2, irstd_folder, list folders given as
      options), so they are known only once it is built.
  """
  train: str
  test: str
  names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset's constants.

  Attributes:
    name: the builder's name, as `datasets.load` takes it.
    default: the splits of the default config (the one `load` builds without
      `config=`).
    configs: named builder configs -> their splits (empty: no named configs).
    mean_std: BasicIRSTD's (mean, std) in grey levels (utils.py:
      get_img_norm_cfg), None where it has none: a run then uses the
      dataset's own statistics (`Source.mean_std`).
    image_size: the side every image has, where they share one; recipes that
      resize train there (GaNet's code at 512 on IRSTD-1k, MSDA-Net's at 256
      on NUDT-SIRST).
    aliases: other spellings accepted by `get` (lower case).
    parts: the datasets it merges, whose metrics evaluation reports one by one
      (`Source.parts`).
  """
  name: str
  default: Splits
  configs: Mapping[str, Splits] = dataclasses.field(default_factory=dict)
  mean_std: tuple[float, float] | None = None
  image_size: int | None = None
  aliases: tuple[str, ...] = ()
  parts: tuple[str, ...] = ()

  def splits(self, config: str | None = None) -> Splits:
    """The splits of `config` (None: the default config).

    A config made from options (irstd_synthetic sizes, irstd_folder, a
    nudt_sirst `split_dir`) has the default train / test names, and its
    splits are named by what it builds.
    """
    if config is None:
      return self.default
    if config in self.configs:
      return self.configs[config]
    return dataclasses.replace(self.default, names=None)


_SIRST_V1_IDX_427 = Splits('trainval', 'test', ('train', 'val', 'test', 'trainval'))
_TRAIN_TEST = Splits('train', 'test', ('train', 'test'))

# BasicIRSTD's constants, not this project's SIRST copy's statistics (mean
# 111.98, std 27.63 over all 427 images by the same rule): the published
# numbers used them.
DATASETS: Mapping[str, Dataset] = {d.name: d for d in (
    Dataset('sirst_v1', default=_SIRST_V1_IDX_427,
            configs={'idx_427': _SIRST_V1_IDX_427, 'basicirstd': _TRAIN_TEST},
            mean_std=(101.06385040283203, 34.619606018066406),
            aliases=('nuaa_sirst', 'nuaa-sirst', 'sirst', 'sirst-v1')),
    Dataset('nudt_sirst', default=_TRAIN_TEST,
            configs={'50_50': _TRAIN_TEST,
                     '70_30': Splits('train', 'test'),
                     'basicirstd': _TRAIN_TEST},
            mean_std=(107.80905151367188, 33.02274703979492),
            image_size=256, aliases=('nudt-sirst',)),
    Dataset('irstd_1k', default=Splits('trainval', 'test', ('trainval', 'test')),
            mean_std=(87.4661865234375, 39.71953201293945),
            image_size=512, aliases=('irstd-1k', 'irstd1k')),
    # The three above merged, each with BasicIRSTD's split (train 1,676 / test
    # 1,079); SCTransNet normalises it with NUAA-SIRST's constants
    # (utils.py: get_img_norm_cfg('SIRST3')).
    Dataset('sirst3', default=_TRAIN_TEST, parts=('nuaa_sirst', 'nudt_sirst', 'irstd_1k'),
            mean_std=(101.06385040283203, 34.619606018066406), aliases=('sirst-3',)),
    # The repository's lists include trainval_full / test_full / val_full,
    # the *_v1fullv2target and mini_* variants and v2background.
    Dataset('sirst_v2', default=Splits('trainval_full', 'test_full')),
    # img_idx/*.txt name the splits; without them there is only 'train'.
    Dataset('irstd_folder', default=Splits('train', 'test')),
    Dataset('irstd_synthetic', default=_TRAIN_TEST),
)}

_ALIASES = {alias: d.name for d in DATASETS.values() for alias in d.aliases}


def canonical(name: str) -> str:
  """The dataset name for `name` or an alias (any case); others unchanged."""
  key = str(name).lower()
  return _ALIASES.get(key, key)


def find(name: str | None) -> Dataset | None:
  """The dataset named `name` (or an alias), or None if unknown."""
  return None if name is None else DATASETS.get(canonical(name))


def get(name: str) -> Dataset:
  """The dataset named `name` (or an alias); a ValueError if unknown."""
  dataset = find(name)
  if dataset is None:
    raise ValueError(f'Unknown dataset {name!r}; known: {sorted(DATASETS)}.')
  return dataset
