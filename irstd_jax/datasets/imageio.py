"""Reads IRSTD images and masks the same way for every dataset.

The public benchmarks mix PNG modes (SIRST alone has RGB, RGBA, palette and
grayscale files), and users bring 16-bit sensor data, so one documented rule
turns every file into the uint8 grayscale image the models see:

* `L`: kept as is. `1` (bilevel): 0 / 255.
* `RGB`, `RGBA`, `P` (palette), `LA` and other colour modes: the ITU-R 601-2
  luma of the RGB colour, `L = R * 299/1000 + G * 587/1000 + B * 114/1000`
  (Pillow's `convert('L')`, identical to BasicIRSTD's `convert('I')` on all
  427 SIRST images). Alpha is ignored, never composited; palette images go
  through their palette.
* 16-bit (`I;16*`), 32-bit integer (`I`) and float (`F`) images: stretched
  linearly from the image's own minimum and maximum to 0..255 (`minmax`, the
  default, so 12- or 14-bit sensor data keeps its contrast), or with
  `high_bit_depth='shift'` the 16-bit value is divided by 257 (full 16-bit
  range to 0..255). A constant image becomes all zeros under `minmax`.

Masks become {0, 1}: a pixel is target when its value exceeds half the mask's
own maximum (so {0, 1}, {0, 255}, {0, 65535} and coloured masks all work; for
colour masks the brightest channel counts); palette masks use the palette
index (non-zero = target).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import PIL.Image
from scipy import ndimage

IMAGE_EXTENSIONS = ('.png', '.bmp', '.jpg', '.jpeg', '.tif', '.tiff')
HIGH_BIT_DEPTH_RULES = ('minmax', 'shift')

_HIGH_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


def _open(path: os.PathLike | str, what: str) -> PIL.Image.Image:
  """Opens and fully decodes a file, or says which file is broken."""
  try:
    image = PIL.Image.open(path)
    image.load()
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(
        f'Cannot read {what} {path}: {e}. Fix: re-save it as a PNG, or delete '
        'it (and its name from the split lists).') from e
  return image


def to_gray(image: PIL.Image.Image, *,
            high_bit_depth: str = 'minmax') -> np.ndarray:
  """(H, W) uint8 grayscale by the module's documented rule."""
  if high_bit_depth not in HIGH_BIT_DEPTH_RULES:
    raise ValueError(f'high_bit_depth={high_bit_depth!r}: use one of '
                     f'{HIGH_BIT_DEPTH_RULES}.')
  mode = image.mode
  if mode == 'L':
    return np.asarray(image, dtype=np.uint8).copy()
  if mode == '1':
    return np.asarray(image.convert('L'), dtype=np.uint8).copy()
  if mode in _HIGH_BIT_MODES:
    return _high_bit_to_uint8(np.asarray(image), mode, high_bit_depth)
  if mode in ('LA', 'La'):
    return np.asarray(image.getchannel('L'), dtype=np.uint8).copy()
  if mode == 'P':
    # Through RGBA so that palette transparency is handled (and ignored).
    image = image.convert('RGBA')
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image.convert('L'), dtype=np.uint8).copy()


def _high_bit_to_uint8(values: np.ndarray, mode: str, rule: str) -> np.ndarray:
  values = values.astype(np.float64)
  if rule == 'shift' and mode != 'F':
    return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
  low, high = float(values.min()), float(values.max())
  if high <= low:
    return np.zeros(values.shape, np.uint8)
  return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def read_image(path: os.PathLike | str, *,
               high_bit_depth: str = 'minmax') -> np.ndarray:
  """Reads an image file as (H, W) uint8 grayscale."""
  return to_gray(_open(path, 'image'), high_bit_depth=high_bit_depth)


def mask_from_pil(image: PIL.Image.Image) -> np.ndarray:
  """(H, W) uint8 in {0, 1} by the module's documented rule."""
  if image.mode == 'P':
    return (np.asarray(image) > 0).astype(np.uint8)
  if image.mode in ('RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
    values = np.asarray(image.convert('RGB')).max(axis=-1)
  elif image.mode in ('LA', 'La'):
    values = np.asarray(image.getchannel('L'))
  elif image.mode == '1':
    values = np.asarray(image.convert('L'))
  else:
    values = np.asarray(image)
  values = values.astype(np.float64)
  peak = values.max() if values.size else 0.0
  if peak <= 0:
    return np.zeros(values.shape, np.uint8)
  return (values > peak / 2).astype(np.uint8)


def read_mask(path: os.PathLike | str) -> np.ndarray:
  """Reads a mask file as (H, W) uint8 in {0, 1}."""
  return mask_from_pil(_open(path, 'mask'))


def resize_nearest(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Nearest-neighbour resize of the first two axes, OpenCV's INTER_NEAREST.

  Output pixel (i, j) takes input (floor(i * H / h), floor(j * W / w)), as
  cv2 and albumentations do for the masks in the official training code.
  """
  out_h, out_w = int(size[0]), int(size[1])
  in_h, in_w = array.shape[:2]
  rows = np.minimum((np.arange(out_h) * in_h) // out_h, in_h - 1)
  cols = np.minimum((np.arange(out_w) * in_w) // out_w, in_w - 1)
  return array[rows][:, cols]


def _linear_taps(out_size: int, in_size: int):
  """Source indices and weights of half-pixel-centred linear resampling."""
  scale = in_size / out_size
  position = (np.arange(out_size) + 0.5) * scale - 0.5
  position = np.clip(position, 0.0, in_size - 1)
  low = np.floor(position).astype(np.int64)
  high = np.minimum(low + 1, in_size - 1)
  weight = (position - low).astype(np.float32)
  return low, high, weight


def resize_bilinear(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Bilinear resize of the first two axes, float32 out.

  Half-pixel centres without antialiasing, i.e. OpenCV's INTER_LINEAR and
  torch's `align_corners=False`, which is what the official code's `cv2` /
  albumentations resizes do.
  """
  out_h, out_w = int(size[0]), int(size[1])
  in_h, in_w = array.shape[:2]
  values = array.astype(np.float32)
  if (out_h, out_w) == (in_h, in_w):
    return values
  r0, r1, wr = _linear_taps(out_h, in_h)
  c0, c1, wc = _linear_taps(out_w, in_w)
  extra = (1,) * (values.ndim - 2)
  wr = wr.reshape((-1, 1) + extra)
  wc = wc.reshape((1, -1) + extra)
  rows = values[r0] * (1 - wr) + values[r1] * wr
  return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def resize_image_uint8(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Bilinear resize of a uint8 image, rounded back to uint8 like cv2 does."""
  return np.clip(np.round(resize_bilinear(image, size)), 0, 255).astype(
      np.uint8)


_EIGHT_CONNECTED = np.ones((3, 3), bool)


def components(mask: np.ndarray) -> tuple[int, np.ndarray]:
  """Targets of a {0, 1} mask: 8-connected components, as Pd counts them.

  Returns:
    (count, boxes) with boxes (count, 4) int32 as (ymin, xmin, ymax, xmax),
    max exclusive (a numpy slice), ordered by component label (raster order
    of each component's first pixel).
  """
  labels, count = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
  boxes = np.zeros((count, 4), np.int32)
  for index, found in enumerate(ndimage.find_objects(labels)):
    boxes[index] = (found[0].start, found[1].start, found[0].stop,
                    found[1].stop)
  return count, boxes


def index_images(directory: os.PathLike | str) -> dict[str, str]:
  """Maps each image file's name without extension to its path.

  Raises a ValueError naming the directory when two files share a name
  (e.g. `a.png` and `a.bmp`), since either could be meant.
  """
  index: dict[str, str] = {}
  for entry in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(entry)
    if ext.lower() not in IMAGE_EXTENSIONS or entry.startswith('.'):
      continue
    if stem in index:
      raise ValueError(
          f'{directory} holds two images named {stem!r}: '
          f'{os.path.basename(index[stem])} and {entry}. Fix: keep one.')
    index[stem] = os.path.join(directory, entry)
  return index


def strip_image_extension(name: str) -> str:
  stem, ext = os.path.splitext(name)
  return stem if ext.lower() in IMAGE_EXTENSIONS else name
