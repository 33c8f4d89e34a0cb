"""What every IRSTD builder shares: features, file checks, encoding, stats.

Builders turn a folder of images and masks into TFDS `array_record` files
without TensorFlow: images are re-encoded with Pillow (TFDS would need TF to
encode numpy arrays), and everything is checked before the first record is
written, so a bad folder fails fast with the file and the fix named. A build
that fails later (an unreadable file) leaves only TFDS's `incomplete.*`
folder, which TFDS deletes: nothing that looks like a finished dataset.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import re
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from irstd_jax.datasets import imageio

VERSION = tfds.core.Version('1.0.0')
RELEASE_NOTES = {'1.0.0': 'First release.'}


class DatasetWarning(UserWarning):
  """Something in the source data was repaired while building (never dropped)."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One example to write: its name and files.

  `mask=None` means the source has no mask for this image because it has no
  target (SIRST-v2 background images, synthetic scenes); the mask is empty.
  """
  id: str
  image: str
  mask: str | None


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                   encoding_format='png'),
      'mask': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                  encoding_format='png'),
      'id': tfds.features.Text(),
      'num_targets': tfds.features.Scalar(dtype=np.int32),
      'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
  })


def png_bytes(array: np.ndarray) -> bytes:
  """PNG of an (H, W) uint8 array. Pillow, since TFDS needs TF for arrays;
  zlib level 1 builds ~3x faster than the default for ~30% more bytes."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(
      buffer, format='png', compress_level=1)
  return buffer.getvalue()


def encode(example_id: str, image: np.ndarray, mask: np.ndarray) -> dict:
  """The feature dict for one (H, W) uint8 image and {0, 1} mask."""
  count, boxes = imageio.components(mask)
  return {
      'image': png_bytes(image),
      'mask': png_bytes(mask),
      'id': example_id,
      'num_targets': np.int32(count),
      'boxes': boxes,
  }


def split_name(stem: str) -> str:
  """A TFDS-safe split name from a list file's name."""
  name = re.sub(r'\W', '_', stem)
  if not name or name.lower() == 'all':
    raise ValueError(f'Split list {stem!r} gives the split name {name!r}, '
                     'which TFDS reserves. Fix: rename the list file.')
  return name


def split_lists_in(folder: pathlib.Path,
                   strip_common_tail: bool = True) -> dict[str, str]:
  """Split name -> list file for every *.txt in `folder`.

  With `strip_common_tail`, BasicIRSTD-style names (`train_NUDT-SIRST.txt`,
  `test_NUDT-SIRST.txt`) lose the `_<dataset>` tail they all share, giving
  `train` and `test`.
  """
  files = sorted(p for p in pathlib.Path(folder).glob('*.txt') if p.is_file())
  stems = [p.stem for p in files]
  if strip_common_tail and len(stems) > 1:
    tails = {m.group(1) if m else None
             for m in (re.match(r'^[A-Za-z]+(_.+)$', s) for s in stems)}
    if len(tails) == 1 and None not in tails:
      tail = tails.pop()
      stems = [s[:-len(tail)] for s in stems]
  return {split_name(stem): str(path) for stem, path in zip(stems, files)}


def read_split_list(path: str | os.PathLike) -> list[str]:
  """Image names in a split list: one per line; blank lines, CRLF and
  extensions ignored. Duplicates are reported and kept once."""
  try:
    text = pathlib.Path(path).read_text(encoding='utf-8-sig')
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'Cannot read split list {path}: {e}. Fix: a UTF-8 text '
                     'file with one image name per line.') from e
  names: list[str] = []
  seen = set()
  duplicates = []
  for line in text.splitlines():
    name = imageio.strip_image_extension(line.strip())
    if not name:
      continue
    if name in seen:
      duplicates.append(name)
      continue
    seen.add(name)
    names.append(name)
  if duplicates:
    warnings.warn(f'{path}: {len(duplicates)} duplicate line(s) kept once: '
                  f'{duplicates[:10]}', DatasetWarning, stacklevel=2)
  return names


def items_from_list(list_path: str, names: Sequence[str],
                    image_index: Mapping[str, str],
                    find_mask, images_dir: str) -> list[Item]:
  """Resolves a split list against the image index, or names what is missing."""
  missing = [(n, i) for i, n in enumerate(names, 1) if n not in image_index]
  if missing:
    shown = ', '.join(f'{n!r} (line {i})' for n, i in missing[:10])
    raise ValueError(
        f'Split list {list_path} names {len(missing)} image(s) not in '
        f'{images_dir}: {shown}. Fix: add those images, or remove the lines '
        'from the list.')
  return [Item(n, image_index[n], find_mask(n)) for n in names]


def resolve_splits(images_dir: pathlib.Path | Sequence[pathlib.Path],
                   masks_dir: pathlib.Path,
                   lists: Mapping[str, str | Sequence[str]] | None,
                   mask_stems,
                   allow_missing_mask=lambda image_path: False
                   ) -> dict[str, list[Item]]:
  """Split lists -> Items, checking every image and mask exists.

  Args:
    images_dir: the image folder, or several (names must be unique across).
    masks_dir: the mask folder.
    lists: split name -> list file (or a list of names); None: one split
      'train' with every image.
    mask_stems: name -> candidate mask file names without extension.
    allow_missing_mask: image path -> whether a missing mask means "no
      target" (an empty mask) rather than an error.
  """
  image_dirs = ([images_dir] if isinstance(images_dir, (str, os.PathLike))
                else list(images_dir))
  for folder in image_dirs + [masks_dir]:
    if not pathlib.Path(folder).is_dir():
      raise ValueError(f'{folder} is missing. Fix: the dataset folder must '
                       'hold images and masks as datasets/README.md shows.')
  image_index: dict[str, str] = {}
  for folder in image_dirs:
    for name, path in imageio.index_images(folder).items():
      if name in image_index:
        raise ValueError(f'Image {name!r} is both {image_index[name]} and '
                         f'{path}. Fix: keep one.')
      image_index[name] = path
  mask_index = imageio.index_images(masks_dir)
  where = ' or '.join(str(d) for d in image_dirs)
  if lists is None:  # No split lists: one split 'train' with every image.
    lists = {'train': sorted(image_index)}
  return {split: items_from_list(
      str(path) if _is_path(path) else where,
      read_split_list(path) if _is_path(path) else list(path),
      image_index,
      lambda name: find_mask(name, image_index[name], mask_index, masks_dir,
                             mask_stems, allow_missing_mask),
      where) for split, path in lists.items()}


def _is_path(value) -> bool:
  return isinstance(value, (str, os.PathLike))


def find_mask(name, image_path, mask_index, masks_dir, mask_stems,
              allow_missing_mask=lambda image_path: False) -> str | None:
  stems = list(mask_stems(name))
  for stem in stems:
    if stem in mask_index:
      return mask_index[stem]
  if allow_missing_mask(image_path):
    return None
  raise missing_mask_error(image_path, os.path.join(masks_dir, stems[0] + '.png'))


def missing_mask_error(image_path: str, expected: str) -> ValueError:
  return ValueError(
      f'No mask for image {image_path}: expected {expected} (any of '
      f'{", ".join(imageio.IMAGE_EXTENSIONS)}). Fix: add the mask (targets '
      'white on black, same size as the image), remove the image, or set '
      'mask_suffix= if your masks are named differently.')


def find_source_dir(explicit: str | os.PathLike | None,
                    manual_dir: str | os.PathLike | None,
                    folder_names: Sequence[str],
                    looks_right) -> pathlib.Path | None:
  """The folder holding a dataset's raw files, or None.

  Looks at `explicit` (the user's `source_dir`, which must exist), then at
  the TFDS manual dir and `./datasets` (the checkout's download folder), each
  itself or with one of `folder_names` below it.
  """
  if explicit is not None:
    root = pathlib.Path(explicit).expanduser()
    if not root.is_dir():
      raise ValueError(f'source_dir {root} is not a folder. Fix: pass the '
                       'folder that holds the dataset (see datasets/README.md).')
    return root
  bases = [pathlib.Path(p) for p in (manual_dir, 'datasets') if p]
  for base in bases:
    for candidate in [base] + [base / name for name in folder_names]:
      if candidate.is_dir() and looks_right(candidate):
        return candidate
  return None


class IrstdBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the IRSTD builders: features, checks, warnings, dataset stats.

  Subclasses implement `_split_items(dl_manager) -> {split: [Item]}`.
  `source_dir` (a keyword of the constructor) is the raw dataset folder; if
  it is not given the TFDS manual dir and `./datasets/<name>` are searched.
  """

  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  HOMEPAGE = ''
  CITATION = ''
  # Folder names the raw dataset is commonly unpacked as.
  FOLDER_NAMES: Sequence[str] = ()
  # Read by `high_bit_depth`-aware builders; benchmarks are 8-bit anyway.
  HIGH_BIT_DEPTH = 'minmax'

  @classmethod
  def make_config(cls, name: str | None = None, *, source_dir=None,
                  **options):
    """The `config=` to construct with, from `load`'s keyword arguments."""
    del source_dir  # Only irstd_folder's config depends on it.
    if options:
      raise ValueError(
          f'{cls.name}: unknown options {sorted(options)}. Configs: '
          f'{[c.name for c in cls.BUILDER_CONFIGS] or "none"} (config=...).')
    return name

  def __init__(self, *, source_dir: str | os.PathLike | None = None,
               **kwargs):
    self._source_dir = source_dir
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(self.__doc__ or '').strip(),
        features=features(),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  # -- Locating the raw files ------------------------------------------------

  def _manual_dir(self, dl_manager) -> str | None:
    # The DownloadManager only exposes `manual_dir` with an assertion when it
    # is empty; we search several places, so read the configured path.
    return getattr(dl_manager, '_manual_dir', None)

  @classmethod
  def _looks_right(cls, root: pathlib.Path) -> bool:
    return (root / 'images').is_dir()

  def _find_root(self, dl_manager, *, required: bool = True):
    root = find_source_dir(self._source_dir, self._manual_dir(dl_manager),
                           self.FOLDER_NAMES, self._looks_right)
    if root is None and required:
      raise ValueError(
          f'{self.name}: raw files not found. Fix: download the dataset and '
          'pass its folder as source_dir= (or `--source_dir`), or unpack it '
          f'under ./datasets/ as one of {list(self.FOLDER_NAMES)}.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS or ""}')
    return root

  # -- Writing ---------------------------------------------------------------

  def _split_items(self, dl_manager) -> Mapping[str, Sequence[Item]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    split_items = self._split_items(dl_manager)
    if not split_items:
      raise ValueError(f'{self.name}: no split found in the source. Fix: see '
                       'the layout in datasets/README.md.')
    for split, items in split_items.items():
      ids = [item.id for item in items]
      if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:10]
        raise ValueError(f'{self.name} split {split!r} names the same image '
                         f'twice: {dup}. Fix: remove the duplicate files.')
      if not items:
        raise ValueError(f'{self.name} split {split!r} is empty. Fix: list '
                         'at least one image.')
    self._image_stats: dict[str, tuple[float, float]] = {}
    self._resized: dict[str, str] = {}
    self._splits_left = set(split_items)
    # Images in several splits (trainval = train + val) are encoded once.
    self._uses_left: dict[str, int] = {}
    for items in split_items.values():
      for item in items:
        self._uses_left[item.id] = self._uses_left.get(item.id, 0) + 1
    self._encoded: dict[str, dict] = {}
    return {split: self._generate_examples(split, items)
            for split, items in split_items.items()}

  def _load_pair(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
    image = imageio.read_image(item.image, high_bit_depth=self.HIGH_BIT_DEPTH)
    if item.mask is None:
      return image, np.zeros_like(image)
    mask = imageio.read_mask(item.mask)
    if mask.shape != image.shape:
      self._resized[item.id] = (
          f'{item.id} (mask {mask.shape[1]}x{mask.shape[0]}, image '
          f'{image.shape[1]}x{image.shape[0]})')
      mask = imageio.resize_nearest(mask, image.shape)
    return image, mask

  def _generate_examples(self, split: str, items: Sequence[Item]):
    resized_before = set(self._resized)
    for item in items:
      example = self._encoded.pop(item.id, None)
      if example is None:
        image, mask = self._load_pair(item)
        values = image.astype(np.float64)
        self._image_stats[item.id] = (float(values.mean()), float(values.std()))
        example = encode(item.id, image, mask)
      self._uses_left[item.id] -= 1
      if self._uses_left[item.id] > 0:
        self._encoded[item.id] = example
      yield item.id, example
    self._finish_split(split, resized_before)

  def _finish_split(self, split: str, resized_before: Iterable[str]) -> None:
    new = [self._resized[i] for i in self._resized if i not in resized_before]
    if new:
      message = (f'{self.name}/{self.builder_config.name if self.builder_config else ""} '
                 f'split {split!r}: resized {len(new)} mask(s) to their image '
                 f'size (nearest neighbour): {"; ".join(new)}')
      warnings.warn(message, DatasetWarning, stacklevel=2)
      logging.warning(message)
    self._splits_left.discard(split)
    stats = np.array(list(self._image_stats.values()), np.float64)
    # Like BasicIRSTD's get_img_norm_cfg: mean of per-image means and stds,
    # over every image of every split (each once).
    self.info.metadata['mean_std'] = [float(stats[:, 0].mean()),
                                      float(stats[:, 1].mean())]
    self.info.metadata['resized_masks'] = sorted(self._resized)
