"""SIRST-v2 (open-sirst-v2): real infrared images with masks and boxes.

Manual download. Layout read (found through `source_dir`, the TFDS manual
dir or ./datasets/open-sirst-v2), the repository's own:
  images/targets/NAME.png, images/backgrounds/NAME.png
  annotations/masks/NAME_pixels0.png   (and NAME.xml)
  splits/*.txt                         (one split per file)
Each `splits/<stem>.txt` becomes the split `<stem>` with `-` turned into `_`
(e.g. `trainval_full`, `test_full`, `mini_v2background`). Images under
`images/backgrounds/` without a mask file have no target and get an empty
mask (counted in the build log); a missing mask for any other image is an
error.
"""

from __future__ import annotations

import logging
import pathlib

from irstd_jax.datasets import base


class SirstV2(base.IrstdBuilder):
  """SIRST-v2 (open-sirst-v2): real single-frame infrared images.

  One split per `splits/*.txt` file of the source, named after the file.
  """

  HOMEPAGE = 'https://github.com/YimianDai/open-sirst-v2'
  CITATION = """@article{dai2023oscar,
  title = {One-Stage Cascade Refinement Networks for Infrared Small Target Detection},
  author = {Dai, Yimian and Li, Xiang and Zhou, Fei and Qian, Yulei and Chen, Yaohong and Yang, Jian},
  journal = {IEEE Transactions on Geoscience and Remote Sensing},
  year = {2023}
}"""
  FOLDER_NAMES = ('open-sirst-v2', 'sirst_v2', 'SIRST-v2', 'sirst-v2')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Clone or download https://github.com/YimianDai/open-sirst-v2; the folder must
hold images/targets/, images/backgrounds/, annotations/masks/ and splits/.
Pass it as source_dir= or place it at ./datasets/open-sirst-v2."""

  @classmethod
  def _looks_right(cls, root: pathlib.Path) -> bool:
    return (root / 'images' / 'targets').is_dir()

  def _split_items(self, dl_manager):
    root = self._find_root(dl_manager)
    splits_dir = root / 'splits'
    if not splits_dir.is_dir() or not list(splits_dir.glob('*.txt')):
      raise ValueError(f'sirst_v2: no split lists in {splits_dir}. Fix: copy '
                       'splits/ from the open-sirst-v2 repository.')
    backgrounds = root / 'images' / 'backgrounds'
    image_dirs = [root / 'images' / 'targets']
    if backgrounds.is_dir():
      image_dirs.append(backgrounds)
    empty = set()

    def background_without_mask(image_path: str) -> bool:
      if pathlib.Path(image_path).parent == backgrounds:
        empty.add(image_path)
        return True
      return False

    split_items = base.resolve_splits(
        image_dirs, root / 'annotations' / 'masks',
        base.split_lists_in(splits_dir, strip_common_tail=False),
        lambda name: (f'{name}_pixels0', name), background_without_mask)
    if empty:
      logging.info('sirst_v2: %d background image(s) have no mask file and get '
                   'an empty mask.', len(empty))
    return split_items
