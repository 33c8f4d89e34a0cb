"""A user's own IRSTD data in the common layout.

  <folder>/images/NAME.png|bmp|jpg|tif     any size, any mode (see imageio)
  <folder>/masks/NAME<suffix>.png|...      same size, targets bright
  <folder>/img_idx/*.txt                   optional split lists
Without `img_idx/`, there is one split `train` with every image. The mask
name suffix (e.g. `_pixels0`) is found automatically unless given as
`mask_suffix=`. Each folder (and its file names, sizes and times) gets its
own config name, so editing the folder triggers a rebuild, and two folders
never collide in the data dir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re

import tensorflow_datasets as tfds

from irstd_jax.datasets import base
from irstd_jax.datasets import imageio


@dataclasses.dataclass
class IrstdFolderConfig(tfds.core.BuilderConfig):
  """Options of a folder build.

  Attributes:
    source: the folder (absolute path).
    mask_suffix: text between the image name and the extension in mask
      names; None finds it (''/'_pixels0'/... whichever every image has).
    images_dir, masks_dir, split_dir: sub-folder names.
    high_bit_depth: 'minmax' or 'shift' (see imageio).
  """
  source: str = ''
  mask_suffix: str | None = None
  images_dir: str = 'images'
  masks_dir: str = 'masks'
  split_dir: str = 'img_idx'
  high_bit_depth: str = 'minmax'


def _fingerprint(root: pathlib.Path, options: dict) -> str:
  digest = hashlib.sha256(repr(sorted(options.items())).encode())
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      stat = os.stat(os.path.join(dirpath, name))
      digest.update(f'{os.path.relpath(os.path.join(dirpath, name), root)}|'
                    f'{stat.st_size}|{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:12]


def infer_mask_suffix(image_names, mask_names) -> str:
  """The suffix s such that most images have a mask named image + s."""
  masks = set(mask_names)
  candidates = {''}
  for image in list(image_names)[:50]:
    for mask in masks:
      if mask.startswith(image):
        candidates.add(mask[len(image):])
  return max(sorted(candidates),
             key=lambda s: sum(f'{n}{s}' in masks for n in image_names))


class IrstdFolder(base.IrstdBuilder):
  """A user's IRSTD folder (images/, masks/, optional img_idx/*.txt)."""

  BUILDER_CONFIGS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Pass your folder as source_dir=: it holds images/ and masks/ (mask names may
carry a suffix such as _pixels0) and optionally img_idx/*.txt split lists."""

  @classmethod
  def make_config(cls, name=None, *, source_dir=None, **options):
    if name is not None:
      raise ValueError('irstd_folder has no named configs; pass source_dir= '
                       'and options such as mask_suffix=.')
    if source_dir is None:
      raise ValueError("irstd_folder needs source_dir='path/to/folder' (with "
                       'images/ and masks/).')
    root = pathlib.Path(source_dir).expanduser().resolve()
    if not root.is_dir():
      raise ValueError(f'irstd_folder: {root} is not a folder.')
    fields = {f.name for f in dataclasses.fields(IrstdFolderConfig)}
    unknown = set(options) - (fields - {'source', 'name', 'version',
                                        'release_notes', 'supported_versions',
                                        'description', 'tags'})
    if unknown:
      raise ValueError(f'irstd_folder: unknown options {sorted(unknown)}; use '
                       'mask_suffix, images_dir, masks_dir, split_dir, '
                       'high_bit_depth.')
    if options.get('high_bit_depth', 'minmax') not in imageio.HIGH_BIT_DEPTH_RULES:
      raise ValueError(f'high_bit_depth must be one of '
                       f'{imageio.HIGH_BIT_DEPTH_RULES}.')
    slug = re.sub(r'[^\w\-]', '_', root.name)[:40] or 'folder'
    return IrstdFolderConfig(
        name=f'{slug}-{_fingerprint(root, options)}', source=str(root),
        description=f'Built from {root}.', **options)

  @property
  def HIGH_BIT_DEPTH(self):  # pylint: disable=invalid-name
    return self.builder_config.high_bit_depth

  def _split_items(self, dl_manager):
    config = self.builder_config
    root = pathlib.Path(config.source)
    images_dir, masks_dir = root / config.images_dir, root / config.masks_dir
    for folder in (images_dir, masks_dir):
      if not folder.is_dir():
        raise ValueError(f'irstd_folder: {folder} is missing. Fix: put the '
                         f'images in {images_dir} and the masks in '
                         f'{masks_dir}.')
    suffix = config.mask_suffix
    if suffix is None:
      suffix = infer_mask_suffix(list(imageio.index_images(images_dir)),
                                 list(imageio.index_images(masks_dir)))
    split_dir = root / config.split_dir
    lists = (base.split_lists_in(split_dir)
             if split_dir.is_dir() and list(split_dir.glob('*.txt')) else None)
    return base.resolve_splits(images_dir, masks_dir, lists,
                               lambda name: (f'{name}{suffix}',))
