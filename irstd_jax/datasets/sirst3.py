"""SIRST3: NUAA-SIRST + NUDT-SIRST + IRSTD-1k, each with BasicIRSTD's split.

The merged set of LESPS (XinyiYing, CVPR 2023) that SCTransNet, PAL and later
papers train one model on and report per part and together. Its lists
(`datasets/SIRST3/img_idx/{train,test}_SIRST3.txt` in XinyiYing/BasicIRSTD
@95650c3 and xdFai/SCTransNet @e027628, the same files) are the union of
BasicIRSTD's per-part lists:

| part | train | test | BasicIRSTD lists |
|---|---|---|---|
| `nuaa_sirst` (SIRST-v1) | 213 | 214 | `NUAA-SIRST/img_idx/*_NUAA-SIRST.txt` |
| `nudt_sirst` | 663 | 664 | `NUDT-SIRST/img_idx/*_NUDT-SIRST.txt` (= DNANet's `50_50`) |
| `irstd_1k` | 800 | 201 | `IRSTD-1K/img_idx/*_IRSTD-1K.txt` (= the official trainval / test) |
| all | 1,676 | 1,079 | |

The three parts are read from one folder holding them as sub-folders, as
BasicIRSTD's `datasets/` does (names as the part builders accept them:
NUAA-SIRST or sirst_v1 ..., NUDT-SIRST ..., IRSTD-1K or IRSTD-1k ...), each
in a layout its own builder reads (`sirst_v1` config `basicirstd`,
`nudt_sirst` config `basicirstd` or `50_50`, `irstd_1k`). Image names are
unique across the parts (Misc_*, 000001..., XDU*). Examples are written part
by part, in that order, and the dataset's metadata records each split's part
sizes, so a loaded split knows its parts (`Source.parts`) and evaluation
reports each part and the whole.
"""

from __future__ import annotations

import dataclasses
import pathlib

from irstd_jax.datasets import base
from irstd_jax.datasets import irstd_1k
from irstd_jax.datasets import nudt_sirst
from irstd_jax.datasets import sirst_v1


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of SIRST3: its builder, builder config and splits."""
  name: str
  title: str
  builder: type
  splits: dict  # SIRST3 split -> the part builder's split.
  layout: str   # What its folder holds, for error messages.


PARTS = (
    Part('nuaa_sirst', 'NUAA-SIRST (SIRST-v1)', sirst_v1.SirstV1,
         {'train': 'train', 'test': 'test'},
         'images/, masks/ and BasicIRSTD\'s img_idx/{train,test}_NUAA-SIRST.txt '
         '(or a copy of github.com/YimianDai/sirst with splits/basicirstd_{train,test}.txt)'),
    Part('nudt_sirst', 'NUDT-SIRST', nudt_sirst.NudtSirst,
         {'train': 'train', 'test': 'test'},
         'images/, masks/ and img_idx/{train,test}_NUDT-SIRST.txt (BasicIRSTD) or '
         '50_50/{train,test}.txt (DNANet)'),
    Part('irstd_1k', 'IRSTD-1k', irstd_1k.Irstd1k,
         {'train': 'trainval', 'test': 'test'},
         'IRSTD1k_Img/, IRSTD1k_Label/, trainval.txt, test.txt (official) or '
         'images/, masks/, img_idx/{train,test}_IRSTD-1K.txt (BasicIRSTD)'),
)
PART_NAMES = tuple(p.name for p in PARTS)
# BasicIRSTD's folder names first: the one an error message suggests.
_SUGGESTED = {'nuaa_sirst': 'NUAA-SIRST', 'nudt_sirst': 'NUDT-SIRST', 'irstd_1k': 'IRSTD-1K'}


def _part_folder_names(part: Part) -> tuple[str, ...]:
  return (_SUGGESTED[part.name],) + tuple(
      n for n in part.builder.FOLDER_NAMES if n != _SUGGESTED[part.name])


class Sirst3(base.IrstdBuilder):
  """SIRST3: NUAA-SIRST, NUDT-SIRST and IRSTD-1k merged (LESPS, SCTransNet, PAL).

  Splits: train 1,676 (213 + 663 + 800), test 1,079 (214 + 664 + 201), each
  the concatenation of the parts' BasicIRSTD splits, part by part.
  """

  name = 'sirst3'
  HOMEPAGE = 'https://github.com/XinyiYing/LESPS'
  CITATION = """@inproceedings{ying2023lesps,
  title = {Mapping Degeneration Meets Label Evolution: Learning Infrared Small Target Detection with Single Point Supervision},
  author = {Ying, Xinyi and Liu, Li and Wang, Yingqian and Li, Ruojing and Chen, Nuo and Lin, Zaiping and Sheng, Weidong and Zhou, Shilin},
  booktitle = {CVPR},
  year = {2023}
}"""
  FOLDER_NAMES = ('SIRST3', 'sirst3')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
SIRST3 is built from its three parts, kept as sub-folders of one folder
(BasicIRSTD's datasets/ layout), whose path is the source_dir:
""" + '\n'.join(f'  <source_dir>/{_SUGGESTED[p.name]}/  {p.layout}' for p in PARTS) + """
BasicIRSTD's dataset archive (https://github.com/XinyiYing/BasicIRSTD) has
all three in this layout; datasets/README.md says where else to get each."""

  @classmethod
  def _looks_right(cls, root: pathlib.Path) -> bool:
    return any(cls._part_root(root, part) is not None for part in PARTS)

  @staticmethod
  def _part_root(root: pathlib.Path, part: Part) -> pathlib.Path | None:
    for name in _part_folder_names(part):
      candidate = root / name
      if candidate.is_dir() and part.builder._looks_right(candidate):  # pylint: disable=protected-access
        return candidate
    return None

  def _split_items(self, dl_manager):
    root = self._find_root(dl_manager, required=False)
    roots = {p.name: None if root is None else self._part_root(root, p) for p in PARTS}
    missing = [p for p in PARTS if roots[p.name] is None]
    if missing:
      # Without a source_dir the default place is ./datasets (the checkout's download folder).
      where = root if root is not None else pathlib.Path('datasets')
      lines = '\n'.join(
          f'  {p.title} (part {p.name}): put it at {where}/{_SUGGESTED[p.name]} '
          f'(or any of {list(_part_folder_names(p))}) holding {p.layout}'
          for p in missing)
      raise ValueError(
          f'sirst3: {len(missing)} of its 3 parts not found'
          f'{"" if root is not None else " (no source_dir given)"}.\n{lines}\nFix: '
          'keep the three parts as sub-folders of one folder (BasicIRSTD\'s '
          'datasets/ layout) and pass that folder as source_dir= '
          '(--config.dataset.source_dir), or unpack them under ./datasets/. '
          'See datasets/README.md for where to get each part.')
    items = {split: [] for split in ('train', 'test')}
    sizes = {split: [] for split in items}
    for part in PARTS:
      builder = part.builder(config=self._part_config(part, roots[part.name]),
                             data_dir=self._data_dir_root, source_dir=roots[part.name])
      part_items = builder._split_items(dl_manager)  # pylint: disable=protected-access
      for split, part_split in part.splits.items():
        items[split].extend(part_items[part_split])
        sizes[split].append([part.name, len(part_items[part_split])])
    self.info.metadata['parts'] = sizes
    return items

  @staticmethod
  def _part_config(part: Part, root: pathlib.Path) -> str | None:
    if part.name == 'nuaa_sirst':
      return 'basicirstd'
    if part.name == 'nudt_sirst':  # BasicIRSTD's lists if present, else DNANet's (the same).
      return 'basicirstd' if list((root / 'img_idx').glob('*.txt')) else '50_50'
    return None
