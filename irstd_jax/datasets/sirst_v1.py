"""SIRST (SIRST-v1, also called NUAA-SIRST): 427 real infrared images.

Layouts read (a local copy is found through `source_dir`, the TFDS manual
dir or ./datasets/sirst_v1):
* the dataset's repository (github.com/YimianDai/sirst) with its zips
  unpacked: `images/NAME.png`, `masks/NAME_pixels0.png`, `idx_427/*.txt`;
* the same with the lists under `splits/idx_427/` and the BasicIRSTD 50/50
  lists as `splits/basicirstd_{train,test}.txt`;
* BasicIRSTD's packaged copy: `images/`, `masks/NAME.png`,
  `img_idx/{train,test}_NUAA-SIRST.txt`.
Without a local copy, the repository's archives (pinned commit) and the
BasicIRSTD lists are downloaded (checksums in checksums.tsv).

Known defect kept by the source: `Misc_111` has a 325x220 image and a 592x400
mask (the same aspect ratio): the mask is resized (nearest) to the image and
a DatasetWarning names it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import urllib.parse
import zipfile

import tensorflow_datasets as tfds

from irstd_jax.datasets import base
from irstd_jax.datasets import catalog

_SIRST_COMMIT = '9ad1a3f900b845853eba25369d9c5e6f661e0479'
_BASICIRSTD_COMMIT = '95650c3970da070473ae7cbd98d1d610aa69fd5b'
_SIRST_RAW = f'https://raw.githubusercontent.com/YimianDai/sirst/{_SIRST_COMMIT}'
_BASICIRSTD_RAW = (
    f'https://raw.githubusercontent.com/XinyiYing/BasicIRSTD/'
    f'{_BASICIRSTD_COMMIT}/datasets/NUAA-SIRST/img_idx')

# Config -> its splits: idx_427 (train, val, test, trainval), basicirstd
# (train, test).
_SPLITS = {config: splits.names
           for config, splits in catalog.get('sirst_v1').configs.items()}

URLS = {
    'images': f'{_SIRST_RAW}/images.zip',
    'masks': f'{_SIRST_RAW}/masks.zip',
    **{f'idx_427/{s}': f'{_SIRST_RAW}/idx_427/{s}.txt'
       for s in _SPLITS['idx_427']},
    **{f'basicirstd/{s}': f'{_BASICIRSTD_RAW}/{s}_NUAA-SIRST.txt'
       for s in _SPLITS['basicirstd']},
}


def _host_port(url: str) -> tuple[str, int]:
  parts = urllib.parse.urlsplit(url)
  return parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80)


def _list_candidates(config: str, split: str) -> list[str]:
  if config == 'idx_427':
    return [f'splits/idx_427/{split}.txt', f'idx_427/{split}.txt']
  return [f'splits/basicirstd_{split}.txt',
          f'img_idx/{split}_NUAA-SIRST.txt', f'img_idx/{split}_SIRST-v1.txt',
          f'50_50/{split}.txt']


class SirstV1(base.IrstdBuilder):
  """SIRST (SIRST-v1 / NUAA-SIRST), 427 real single-frame infrared images.

  Configs: `idx_427` (the dataset's own split: train 256, val 85, test 86,
  trainval 341) and `basicirstd` (the 50/50 split of BasicIRSTD and DNANet:
  train 213, test 214).
  """

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='idx_427',
          description="The dataset's own split (idx_427): train 256, val 85, "
                      'test 86, trainval 341.'),
      tfds.core.BuilderConfig(
          name='basicirstd',
          description='The BasicIRSTD / DNANet 50/50 split: train 213, '
                      'test 214.'),
  ]
  HOMEPAGE = 'https://github.com/YimianDai/sirst'
  CITATION = """@inproceedings{dai21acm,
  title = {Asymmetric Contextual Modulation for Infrared Small Target Detection},
  author = {Yimian Dai and Yiquan Wu and Fei Zhou and Kobus Barnard},
  booktitle = {IEEE Winter Conference on Applications of Computer Vision (WACV)},
  year = {2021}
}"""
  FOLDER_NAMES = ('sirst_v1', 'sirst', 'SIRST', 'SIRST-v1', 'NUAA-SIRST')

  def _split_items(self, dl_manager):
    config = self.builder_config.name
    root = self._find_root(dl_manager, required=False)
    lists = {}
    if root is not None:
      for split in _SPLITS[config]:
        for candidate in _list_candidates(config, split):
          if (root / candidate).is_file():
            lists[split] = str(root / candidate)
            break
    if root is None or len(lists) < len(_SPLITS[config]):
      downloaded = self._download(dl_manager, config, need_images=root is None)
      if root is None:
        root = downloaded.pop('root')
      for split in _SPLITS[config]:
        lists.setdefault(split, downloaded[split])
    return base.resolve_splits(
        root / 'images', root / 'masks', lists,
        lambda name: (f'{name}_pixels0', name))

  def _download(self, dl_manager, config: str, *, need_images: bool):
    """Fetches what the local copy lacks; returns split -> list path (+root)."""
    wanted = {f'{config}/{s}': URLS[f'{config}/{s}'] for s in _SPLITS[config]}
    if need_images:
      wanted.update(images=URLS['images'], masks=URLS['masks'])
    try:
      for url in {_host_port(u) for u in wanted.values()}:
        # TFDS retries a dead network for minutes; fail fast instead.
        socket.create_connection(url, timeout=10).close()
      paths = dl_manager.download(wanted)
    except Exception as e:  # pylint: disable=broad-except
      if need_images:
        missing = 'no local copy was found'
      else:
        missing = (f'the {config} split lists are not in the local copy '
                   f'(looked for {_list_candidates(config, "train")[:2]} ...)')
      raise ValueError(
          f'sirst_v1: {missing} and the download failed ({e}). Fix: pass '
          'source_dir= pointing at a copy of https://github.com/YimianDai/sirst '
          'with images.zip and masks.zip unpacked and the split lists in '
          'idx_427/ or splits/ (see datasets/README.md).') from e
    result = {s: str(paths[f'{config}/{s}']) for s in _SPLITS[config]}
    if need_images:
      root = pathlib.Path(dl_manager.download_dir) / f'sirst_v1_{_SIRST_COMMIT[:7]}'
      if not root.is_dir():
        partial = root.with_name(root.name + '.partial')
        shutil.rmtree(partial, ignore_errors=True)
        for key in ('images', 'masks'):
          # TFDS extraction needs TensorFlow; zipfile does not.
          with zipfile.ZipFile(paths[key]) as archive:
            members = [m for m in archive.namelist()
                       if not m.startswith('__MACOSX')
                       and not os.path.basename(m).startswith('.')]
            archive.extractall(partial, members)
        os.replace(partial, root)
      result['root'] = root
    return result
