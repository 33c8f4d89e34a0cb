"""NUDT-SIRST: 1,327 synthetic 256x256 infrared images (DNANet's dataset).

Manual download. Layout read (found through `source_dir`, the TFDS manual
dir or ./datasets/NUDT-SIRST):
  images/000001.png ...   masks/000001.png ...
  50_50/train.txt, 50_50/test.txt          (the distribution's 1:1 split)
  <other split folder>/*.txt                (e.g. a 70/30 split; config)
BasicIRSTD's copy (`img_idx/train_NUDT-SIRST.txt`, `img_idx/test_...`) is
read by the `basicirstd` config; its lists equal DNANet's 50_50 test list.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from irstd_jax.datasets import base


@dataclasses.dataclass
class NudtSirstConfig(tfds.core.BuilderConfig):
  """`split_dir`: the folder of split lists; each `*.txt` in it is a split."""
  split_dir: str = '50_50'


class NudtSirst(base.IrstdBuilder):
  """NUDT-SIRST, 1,327 synthetic infrared images of 256x256 (DNANet).

  Configs: `50_50` (default; train 663 / test 664 from the `50_50/` lists),
  `70_30` (lists in `70_30/`), `basicirstd` (lists in `img_idx/`). A custom
  folder of lists: `load('nudt_sirst', split, split_dir='my_lists')`.
  """

  BUILDER_CONFIGS = [
      NudtSirstConfig(name='50_50', split_dir='50_50',
                      description='1:1 split (train 663, test 664).'),
      NudtSirstConfig(name='70_30', split_dir='70_30',
                      description='The 70/30 split lists in 70_30/.'),
      NudtSirstConfig(name='basicirstd', split_dir='img_idx',
                      description="BasicIRSTD's lists (same 663 / 664)."),
  ]
  HOMEPAGE = 'https://github.com/YeRen123455/Infrared-Small-Target-Detection'
  CITATION = """@article{li2022dense,
  title = {Dense Nested Attention Network for Infrared Small Target Detection},
  author = {Li, Boyang and Xiao, Chao and Wang, Longguang and Wang, Yingqian and Lin, Zaiping and Li, Miao and An, Wei and Guo, Yulan},
  journal = {IEEE Transactions on Image Processing},
  year = {2022}
}"""
  FOLDER_NAMES = ('NUDT-SIRST', 'nudt_sirst', 'NUDT_SIRST')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
NUDT-SIRST is distributed through Google Drive / Baidu links in
https://github.com/YeRen123455/Infrared-Small-Target-Detection (or inside
BasicIRSTD's dataset archive, https://github.com/XinyiYing/BasicIRSTD).
Unpack it so that the folder holds images/, masks/ and 50_50/{train,test}.txt
(and any other split folder such as 70_30/), then pass that folder as
source_dir= or place it at ./datasets/NUDT-SIRST."""

  @classmethod
  def make_config(cls, name=None, *, source_dir=None, **overrides):
    del source_dir
    if not overrides:
      return name
    split_dir = overrides.pop('split_dir')
    if overrides:
      raise ValueError(f'nudt_sirst: unknown options {sorted(overrides)}; '
                       'only split_dir= is configurable.')
    return NudtSirstConfig(name=f'split_{base.split_name(split_dir)}',
                           split_dir=split_dir)

  def _split_items(self, dl_manager):
    root = self._find_root(dl_manager)
    folder = root / self.builder_config.split_dir
    if not folder.is_dir() or not list(folder.glob('*.txt')):
      found = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and list(p.glob('*.txt')))
      raise ValueError(
          f'nudt_sirst config {self.builder_config.name!r}: no split lists in '
          f'{folder}. Folders with lists here: {found}. Fix: pick one with '
          "split_dir='<folder>' or a config, or add the lists.")
    return base.resolve_splits(root / 'images', root / 'masks',
                               base.split_lists_in(folder),
                               lambda name: (name, f'{name}_pixels0'))
