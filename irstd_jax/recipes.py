"""The IRSTD training recipes people use, one example at a time.

From the official code (../shared/research/anchors.md):
* `basicirstd`: BasicIRSTD. Normalise by the dataset's mean / std, zero-pad
  (in normalised units) to at least `crop_size`, take a random `crop_size`
  patch that holds a target pixel with probability 0.5, then vertical flip,
  horizontal flip and transpose, each with probability 0.5. 1 channel.
* `ganet`: GaNet's code. Resize to `image_size` (default 256; 512 for
  irstd_1k, i.e. native), bilinear (cv2 INTER_LINEAR) for images, nearest for
  masks; no augmentation; /255; 1 channel.
* `gglnet`: GGL-Net's (MSDA-Net) code. Resize to `image_size` (default 512;
  256 for nudt_sirst), then the albumentations `SomeOf(..., 3, p=0.5)` list
  as albumentations 1.3.0 (the version the code pins) runs it (`Augment`):
  with probability 0.5, three ops drawn with replacement, each with
  probability its p / sum of the p's, each then applied: vertical /
  horizontal flip, transpose, rotate-90 (p 0.5), brightness +-0.2*255 and
  contrast x[0.8, 1.2] (p 0.2), rotate +-45 deg, shift +-10 %, scale
  x[0.8, 1.2] (p 0.5; bilinear images, nearest masks, reflect-101 borders),
  Gaussian noise of variance 10..50 (p 0.2), two no-ops (p 0.5); /255; 3
  channels (the grey image repeated: our datasets store grey, where the
  official code reads the PNG as RGB).
* `pal`: the PAL framework's fully supervised training (YuChuang1205/PAL,
  which the GGL-Net authors recommend over their MSDA-Net code). A uniformly
  placed random `crop_size` patch at native resolution (images smaller than
  the crop padded with black, before normalising; no target bias), then
  `PAL_AUGMENT` (the `gglnet` list with brightness / contrast 0.3 and rotate
  p 0.3); normalised by the training split's mean / std (mean of per-image
  means and of per-image stds, PAL's `Calculate_mean_std` over its training
  folder); 3 channels.

Evaluation, for every recipe: the image at native size or resized to a side
(`resize`), then `normalize`d; `resolve` says which side and normalisation.

`resolve` turns a config's input fields (which may say "the recipe's
default") into concrete values once; `input_pipeline` batches with them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import PIL.Image

from irstd_jax.datasets import catalog
from irstd_jax.datasets import imageio

RECIPES = ('basicirstd', 'ganet', 'gglnet', 'pal')

UNIT = (0.0, 255.0)
# The resize side on datasets whose images do not share one (GaNet's
# base_size, MSDA-Net's IMAGE_SIZE); on those that do, the recipes train at
# it (catalog.Dataset.image_size). basicirstd crops instead.
_DEFAULT_SIZE = {'ganet': 256, 'gglnet': 512}
_CHANNELS = {'basicirstd': 1, 'ganet': 1, 'gglnet': 3, 'pal': 3}


def check(recipe: str) -> None:
  if recipe not in RECIPES:
    raise ValueError(f'Unknown recipe {recipe!r}; use one of {RECIPES}.')


def resizes(recipe: str) -> bool:
  """Whether `recipe` trains on whole images resized to a square (else crops)."""
  check(recipe)
  return recipe in _DEFAULT_SIZE


def normalization(name: str) -> tuple[float, float]:
  """(mean, std) in grey levels: 'unit' (/255) or a dataset's BasicIRSTD values.

  Known: 'unit', 'sirst_v1' (alias 'nuaa_sirst'), 'nudt_sirst', 'irstd_1k'.
  Other datasets: leave the normalisation to `resolve`, which uses the
  dataset's own statistics (`Source.mean_std`, computed when it was built).
  """
  if str(name).lower() == 'unit':
    return UNIT
  dataset = catalog.find(name)
  if dataset is None or dataset.mean_std is None:
    known = ['unit'] + sorted(d.name for d in catalog.DATASETS.values()
                              if d.mean_std is not None)
    raise ValueError(
        f'No normalisation named {name!r}; known: {known}. For another '
        "dataset use None (its own statistics) or 'unit'.")
  return dataset.mean_std


_named_normalization = normalization  # `resolve` has an argument of that name.

# The normalisation measured on the training split itself (PAL's).
TRAIN_SPLIT = 'train_split'


def dataset_mean_std(source, *, measure: bool = False) -> tuple[float, float]:
  """Mean of per-image means and stds (BasicIRSTD's rule for new datasets).

  A built dataset carries them (`Source.mean_std`, over all its splits);
  with `measure`, or for other sequences of example dicts, the images of
  `source` itself are measured.
  """
  stats = None if measure else getattr(source, 'mean_std', None)
  if stats:
    return float(stats[0]), float(stats[1])
  means, stds = [], []
  for example in source:
    image = np.asarray(example['image'])
    image = image[..., 0] if image.ndim == 3 else image
    means.append(float(np.mean(image, dtype=np.float64)))
    stds.append(float(np.std(image, dtype=np.float64)))
  if not means:
    raise ValueError('The source is empty: nothing to train or evaluate on.')
  return float(np.mean(means)), float(np.mean(stds))


# -- One config, resolved ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The input side of a run, every field concrete.

  Attributes:
    recipe: one of `RECIPES`.
    train_size: the side of the training images (the crop, or the resize).
    eval_resolution: 'native' or the side evaluation images are resized to.
    num_channels: channels of the images (the grey image repeated).
    mean, std: images are (x - mean) / std, x in grey levels.
  """
  recipe: str
  train_size: int
  eval_resolution: str | int
  num_channels: int
  mean: float
  std: float

  @property
  def mean_std(self) -> tuple[float, float]:
    return self.mean, self.std


def _positive(name: str, value: Any) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name}={value!r} must be a positive integer.')
  return int(value)


def train_size(recipe: str, dataset: str | None, *,
               image_size: int | None = None, crop_size: int = 256) -> int:
  """The side of the training images: the crop (basicirstd, pal), else the resize.

  `image_size=None` resizes to the dataset's own side where all its images
  share one (catalog), else to the recipe's default (ganet 256, gglnet 512).
  """
  if not resizes(recipe):
    return _positive('crop_size', crop_size)
  if image_size is None:
    known = catalog.find(dataset)
    image_size = (known.image_size if known and known.image_size
                  else _DEFAULT_SIZE[recipe])
  return _positive('image_size', image_size)


def _eval_resolution(recipe, dataset, resolution, size) -> str | int:
  if resolution == 'native':
    return 'native'
  if resolution == 'train':  # The training size, crops included.
    return size
  if resolution == 'recipe':  # The recipe's own size for the dataset.
    return train_size(recipe, dataset) if resizes(recipe) else 'native'
  if isinstance(resolution, str):
    raise ValueError(f'resolution={resolution!r}: use "native", "train", '
                     '"recipe" or a positive int.')
  return _positive('resolution', resolution)


def resolve(recipe: str, dataset: str | None, *,
            image_size: int | None = None, crop_size: int = 256,
            num_channels: int | None = None,
            normalization: str | Sequence[float] | None = None,  # pylint: disable=redefined-outer-name
            resolution: str | int = 'native',
            train_source: Any = None) -> InputSpec:
  """The concrete input values for `recipe` on `dataset`.

  Args:
    recipe: one of `RECIPES` (see the module docstring).
    dataset: the dataset's name (catalog), or None for other data.
    image_size: ganet / gglnet resize side; None: the dataset's own side where
      its images share one, else 256 (ganet) / 512 (gglnet).
    crop_size: basicirstd's and pal's patch side.
    num_channels: None: 1, or 3 for gglnet and pal.
    normalization: None (/255 for ganet / gglnet; for basicirstd the
      dataset's BasicIRSTD values, else its own statistics; for pal
      'train_split'), a name (`normalization()`, or 'train_split': the mean
      of per-image means and stds of `train_source` itself) or (mean, std)
      in grey levels.
    resolution: evaluation's: 'native', a side, 'train' (the training size)
      or 'recipe' (the recipe's default size for the dataset; native for
      basicirstd).
    train_source: the training split (a built dataset's statistics cover
      all its splits), read only when basicirstd needs the dataset's own
      statistics or the normalisation is 'train_split'.

  Returns:
    An `InputSpec`.
  """
  check(recipe)
  size = train_size(recipe, dataset, image_size=image_size,
                    crop_size=crop_size)
  if normalization is None and recipe == 'pal':
    normalization = TRAIN_SPLIT
  if isinstance(normalization, str) and normalization == TRAIN_SPLIT:
    if train_source is None:
      raise ValueError("normalization='train_split' measures the training "
                       'split: pass train_source=.')
    mean_std = dataset_mean_std(train_source, measure=True)
  elif normalization is None:
    known = catalog.find(dataset)
    if recipe != 'basicirstd':
      mean_std = UNIT
    elif known is not None and known.mean_std is not None:
      mean_std = known.mean_std
    elif train_source is not None:
      mean_std = dataset_mean_std(train_source)
    else:
      raise ValueError(
          f'basicirstd on {dataset!r} normalises by the dataset\'s own '
          'statistics: pass train_source= (or a normalization).')
  elif isinstance(normalization, str):
    mean_std = _named_normalization(normalization)
  else:
    mean_std = normalization
  mean, std = float(mean_std[0]), float(mean_std[1])
  if not std > 0:
    raise ValueError(f'mean_std={tuple(mean_std)}: the std must be positive.')
  channels = _CHANNELS[recipe] if num_channels is None else num_channels
  return InputSpec(
      recipe=recipe, train_size=size,
      eval_resolution=_eval_resolution(recipe, dataset, resolution, size),
      num_channels=_positive('num_channels', channels), mean=mean, std=std)


# -- Per-example transforms ----------------------------------------------------


def normalize(image: np.ndarray, mean: float, std: float) -> np.ndarray:
  """float32 (image - mean) / std."""
  return (image.astype(np.float32) - mean) / std


def resize(image: np.ndarray, mask: np.ndarray, size: int
           ) -> tuple[np.ndarray, np.ndarray]:
  """Image (bilinear, rounded to uint8 as cv2 does) and mask (nearest)."""
  return (imageio.resize_image_uint8(image, (size, size)),
          imageio.resize_nearest(mask, (size, size)))


def basicirstd(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               *, crop: int, mean: float, std: float,
               targets: tuple[np.ndarray, np.ndarray] | None = None,
               positive_probability: float = 0.5
               ) -> tuple[np.ndarray, np.ndarray]:
  """BasicIRSTD's training example from a native (H, W) uint8 image.

  `targets`: `np.nonzero(mask)`, if the caller keeps it.
  `positive_probability`: the chance that the crop is placed around a random
  target pixel rather than uniformly (BasicIRSTD's `pos_prob`, 0.5).
  """
  height, width = image.shape
  # BasicIRSTD pads the normalised image with zeros (bottom / right) up to
  # the crop size; only the crop is computed here.
  padded_h, padded_w = max(height, crop), max(width, crop)
  rows, cols = np.nonzero(mask) if targets is None else targets
  if rng.random() < positive_probability and len(rows):
    k = rng.integers(len(rows))
    y, x = int(rows[k]), int(cols[k])
    top = rng.integers(max(0, y - crop + 1), min(y, padded_h - crop) + 1)
    left = rng.integers(max(0, x - crop + 1), min(x, padded_w - crop) + 1)
  else:
    top = rng.integers(0, padded_h - crop + 1)
    left = rng.integers(0, padded_w - crop + 1)
  patch = np.zeros((crop, crop), np.float32)
  patch_mask = np.zeros((crop, crop), bool)
  inside_h, inside_w = min(height - top, crop), min(width - left, crop)
  region = image[top:top + inside_h, left:left + inside_w]
  patch[:inside_h, :inside_w] = normalize(region, mean, std)
  patch_mask[:inside_h, :inside_w] = mask[top:top + inside_h,
                                          left:left + inside_w]
  if rng.random() < 0.5:
    patch, patch_mask = patch[::-1], patch_mask[::-1]
  if rng.random() < 0.5:
    patch, patch_mask = patch[:, ::-1], patch_mask[:, ::-1]
  if rng.random() < 0.5:
    patch, patch_mask = patch.T, patch_mask.T
  return patch, patch_mask


def ganet(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
          mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
  """GaNet's training example from an image already `resize`d."""
  del rng  # No augmentation in GaNet's code.
  return normalize(image, mean, std), mask


def gglnet(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
           mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
  """GGL-Net's training example from an image already `resize`d."""
  image, mask = some_of(image.astype(np.float32), mask, rng, MSDA_AUGMENT)
  return normalize(np.asarray(image, np.float32), mean, std), mask


def pal(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
        crop: int, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
  """PAL's training example from a native (H, W) uint8 image.

  PAL (YuChuang1205/PAL, components/dataset_final_...py `random_crop`, then
  train_model.py `train_transform`): pad with black (grey level 0, before
  normalising) at the bottom / right up to `crop` where the image is smaller,
  take a uniformly placed `crop` patch (no bias towards targets), apply
  `PAL_AUGMENT`, normalise.
  """
  height, width = image.shape
  padded_h, padded_w = max(height, crop), max(width, crop)
  if (padded_h, padded_w) != (height, width):
    image = np.pad(image, ((0, padded_h - height), (0, padded_w - width)))
    mask = np.pad(mask, ((0, padded_h - height), (0, padded_w - width)))
  top = int(rng.integers(0, padded_h - crop + 1))
  left = int(rng.integers(0, padded_w - crop + 1))
  patch = image[top:top + crop, left:left + crop].astype(np.float32)
  patch_mask = mask[top:top + crop, left:left + crop]
  patch, patch_mask = some_of(patch, patch_mask, rng, PAL_AUGMENT)
  return normalize(np.asarray(patch, np.float32), mean, std), patch_mask


# -- The albumentations SomeOf list of MSDA-Net and PAL -------------------------

# The ops of the list, in its order; `_op` applies them.
SOME_OF_OPS = ('vertical_flip', 'horizontal_flip', 'transpose', 'rotate90',
               'brightness', 'contrast', 'rotate45', 'shift', 'scale',
               'gauss_noise', 'no_op', 'no_op')


@dataclasses.dataclass(frozen=True)
class Augment:
  """One `A.SomeOf([...], 3, p=0.5)` list of the codes, as albumentations 1.3.0 runs it.

  MSDA-Net and PAL pin albumentations 1.3.0 (their READMEs), whose `SomeOf`, with
  probability `p`, draws `n` ops *with replacement*, op i with probability
  weights[i] / sum(weights) (each op's own `p` serves only as a weight), and
  applies each drawn op unconditionally (`force_apply=True`;
  albumentations/core/composition.py, class SomeOf).

  Attributes:
    weights: each op's `p` in the list (`SOME_OF_OPS` order; NoOp's default 0.5).
    brightness: RandomBrightness limit (x 255 grey levels, added).
    contrast: RandomContrast limit (a factor in 1 +- limit).
    n: ops drawn.
    p: probability that the list runs at all.
  """
  weights: tuple[float, ...]
  brightness: float
  contrast: float
  n: int = 3
  p: float = 0.5


# MSDA-Net's train_MSDA_Net.py (GGL-Net's code).
MSDA_AUGMENT = Augment(weights=(.5, .5, .5, .5, .2, .2, .5, .5, .5, .2, .5, .5),
                       brightness=0.2, contrast=0.2)
# PAL's train_model.py: brightness / contrast 0.3 and Rotate p 0.3, else the same.
PAL_AUGMENT = Augment(weights=(.5, .5, .5, .5, .2, .2, .3, .5, .5, .2, .5, .5),
                      brightness=0.3, contrast=0.3)


def draw_ops(rng: np.random.Generator, augment: Augment) -> list[int]:
  """The op indices one example gets (empty: the list did not run)."""
  if rng.random() >= augment.p:
    return []
  weights = np.asarray(augment.weights, np.float64)
  return [int(i) for i in rng.choice(len(weights), size=augment.n, replace=True,
                                     p=weights / weights.sum())]


def some_of(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            augment: Augment) -> tuple[np.ndarray, np.ndarray]:
  """`augment` on a float image in grey levels [0, 255] and its mask."""
  for op in draw_ops(rng, augment):
    image, mask = _op(op, image, mask, rng, augment)
  return image, mask


def _warp(image, mask, matrix, offset):
  """Affine warp, output -> input (row, col) coordinates; reflect-101 borders.

  Pillow's affine transform on a reflect-padded copy: same values as
  `scipy.ndimage.affine_transform(order=1 / 0, mode='mirror')` to 2e-5 grey
  levels, about twice as fast.
  """
  height, width = image.shape
  corners = np.array([[0, 0], [0, width - 1], [height - 1, 0],
                      [height - 1, width - 1]], np.float64)
  sources = corners @ matrix.T + offset
  overflow = max(0.0, -sources.min(),
                 (sources - [height - 1, width - 1]).max())
  pad = int(np.ceil(overflow)) + 2
  padded = np.pad(np.asarray(image, np.float32), pad, mode='reflect')
  padded_mask = np.pad(np.asarray(mask, np.uint8), pad, mode='reflect')
  # Pillow maps output (x, y) to input (a x + b y + c, d x + e y + f) with
  # pixel centres at +0.5; ours maps (row, col) with centres at integers.
  shift = np.asarray(offset, np.float64) + pad
  a, b, d, e = matrix[1, 1], matrix[1, 0], matrix[0, 1], matrix[0, 0]
  coefficients = (a, b, shift[1] + 0.5 - 0.5 * (a + b),
                  d, e, shift[0] + 0.5 - 0.5 * (d + e))
  affine = PIL.Image.Transform.AFFINE
  warped = PIL.Image.fromarray(padded, 'F').transform(
      (width, height), affine, coefficients,
      resample=PIL.Image.Resampling.BILINEAR)
  warped_mask = PIL.Image.fromarray(padded_mask, 'L').transform(
      (width, height), affine, coefficients,
      resample=PIL.Image.Resampling.NEAREST)
  return np.asarray(warped), np.asarray(warped_mask) > 0


def _about_center(shape, linear):
  center = (np.asarray(shape, np.float64) - 1) / 2
  return linear, center - linear @ center


def _op(op: int, image, mask, rng: np.random.Generator, augment: Augment):
  """Op `op` of the `SomeOf` list (`SOME_OF_OPS`), applied for sure."""
  if op == 0:                             # VerticalFlip
    return image[::-1], mask[::-1]
  if op == 1:                             # HorizontalFlip
    return image[:, ::-1], mask[:, ::-1]
  if op == 2:                             # Transpose
    return image.T, mask.T
  if op == 3:                             # RandomRotate90
    turns = int(rng.integers(4))
    return np.rot90(image, turns), np.rot90(mask, turns)
  if op == 4:                             # RandomBrightness(limit)
    shift = rng.uniform(-augment.brightness, augment.brightness) * 255
    return np.clip(image + shift, 0, 255), mask
  if op == 5:                             # RandomContrast(limit)
    factor = rng.uniform(1 - augment.contrast, 1 + augment.contrast)
    return np.clip(image * factor, 0, 255), mask
  if op == 6:                             # Rotate(45)
    angle = np.deg2rad(rng.uniform(-45, 45))
    cos, sin = np.cos(angle), np.sin(angle)
    matrix, offset = _about_center(image.shape,
                                   np.array([[cos, -sin], [sin, cos]]))
    return _warp(np.ascontiguousarray(image), mask, matrix, offset)
  if op == 7:                             # ShiftScaleRotate(shift 0.1)
    shift = rng.uniform(-0.1, 0.1, size=2) * np.asarray(image.shape)
    return _warp(np.ascontiguousarray(image), mask, np.eye(2), -shift)
  if op == 8:                             # ShiftScaleRotate(scale 0.2)
    scale = rng.uniform(0.8, 1.2)
    matrix, offset = _about_center(image.shape, np.eye(2) / scale)
    return _warp(np.ascontiguousarray(image), mask, matrix, offset)
  if op == 9:                             # GaussNoise(var 10..50)
    sigma = np.sqrt(rng.uniform(10, 50))
    noisy = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255), mask
  return image, mask                       # NoOp (10, 11).
