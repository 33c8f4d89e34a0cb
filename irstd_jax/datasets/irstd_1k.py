"""IRSTD-1k: 1,001 real 512x512 infrared images (ISNet's dataset).

Manual download. Layouts read (found through `source_dir`, the TFDS manual
dir or ./datasets/IRSTD-1k):
* the official archive: `IRSTD1k_Img/XDU0.png ...`, `IRSTD1k_Label/XDU0.png
  ...`, `trainval.txt` (800) and `test.txt` (201);
* BasicIRSTD's copy: `images/`, `masks/`, `img_idx/train_IRSTD-1K.txt`
  (the same 800, stored as split `trainval`) and `img_idx/test_IRSTD-1K.txt`.
Splits: `trainval` (800), `test` (201).
"""

from __future__ import annotations

import pathlib

from irstd_jax.datasets import base

_LAYOUTS = (
    # (images, masks, {split: candidate list files})
    ('IRSTD1k_Img', 'IRSTD1k_Label',
     {'trainval': ('trainval.txt', 'Splits/trainval.txt'),
      'test': ('test.txt', 'Splits/test.txt')}),
    ('images', 'masks',
     {'trainval': ('img_idx/train_IRSTD-1K.txt', 'img_idx/trainval.txt',
                   'trainval.txt'),
      'test': ('img_idx/test_IRSTD-1K.txt', 'img_idx/test.txt', 'test.txt')}),
)


class Irstd1k(base.IrstdBuilder):
  """IRSTD-1k, 1,001 real infrared images of 512x512 (ISNet, CVPR 2022).

  Splits: trainval 800, test 201.
  """

  name = 'irstd_1k'
  HOMEPAGE = 'https://github.com/RuiZhang97/ISNet'
  CITATION = """@inproceedings{zhang2022isnet,
  title = {ISNet: Shape Matters for Infrared Small Target Detection},
  author = {Zhang, Mingjing and Zhang, Rui and Yang, Yuxiang and Bai, Haichen and Zhang, Jing and Guo, Jie},
  booktitle = {CVPR},
  year = {2022}
}"""
  FOLDER_NAMES = ('IRSTD-1k', 'IRSTD-1K', 'irstd_1k', 'IRSTD1k')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
IRSTD-1k is distributed through the Google Drive / Baidu links in
https://github.com/RuiZhang97/ISNet (or inside BasicIRSTD's dataset archive).
Unpack it so that the folder holds IRSTD1k_Img/, IRSTD1k_Label/, trainval.txt
and test.txt (or BasicIRSTD's images/, masks/, img_idx/), then pass that
folder as source_dir= or place it at ./datasets/IRSTD-1k."""

  @classmethod
  def _looks_right(cls, root: pathlib.Path) -> bool:
    return any((root / images).is_dir() for images, _, _ in _LAYOUTS)

  def _split_items(self, dl_manager):
    root = self._find_root(dl_manager)
    for images, masks, candidates in _LAYOUTS:
      if not (root / images).is_dir():
        continue
      lists = {}
      for split, names in candidates.items():
        found = [root / n for n in names if (root / n).is_file()]
        if not found:
          raise ValueError(
              f'irstd_1k: no {split} list in {root} (looked for '
              f'{", ".join(names)}). Fix: copy the list from the dataset '
              'archive (https://github.com/RuiZhang97/ISNet has trainval.txt '
              'and test.txt).')
        lists[split] = str(found[0])
      return base.resolve_splits(root / images, root / masks, lists,
                                 lambda name: (name, f'{name}_pixels0'))
    raise ValueError(f'irstd_1k: {root} has neither IRSTD1k_Img/ nor images/. '
                     'Fix: point source_dir at the unpacked dataset folder.')
