"""Training and evaluation batches with the IRSTD recipes people use.

The datasets are small (427 to ~1,300 images), so a split is decoded once
into RAM and batches are cut with numpy. Measured against grain on this
project's data (README, "Datasets"), that is several times faster and its
state is three integers. Each batch is a pure function of (seed, step):

* the training stream is the concatenation of per-epoch permutations
  (`SeedSequence(seed, spawn_key=(0, epoch))`); global batch k takes stream
  positions [k*B, (k+1)*B); example i of the stream is augmented with
  `SeedSequence(seed, spawn_key=(1, i))`;
* so runs with the same seed give the same batches, whatever the number of
  processes or threads, and `get_state()` / `set_state()` (a JSON dict)
  resume at exactly the next batch, even with another process count;
* each process computes only its slice [p*B/P, (p+1)*B/P) of every global
  batch; `shard_batch` joins the slices into global arrays on the 'data' axis.

Recipes (`recipe=`), from the official code (../shared/research/anchors.md):
* `basicirstd`: BasicIRSTD. Normalise by the dataset's mean / std, zero-pad
  (in normalised units) to at least `crop_size`, take a random `crop_size`
  patch that holds a target pixel with probability 0.5, then vertical flip,
  horizontal flip and transpose, each with probability 0.5. 1 channel.
* `ganet`: GaNet's code. Resize to `image_size` (default 256; 512 for
  irstd_1k, i.e. native), bilinear (cv2 INTER_LINEAR) for images, nearest for
  masks; no augmentation; /255; 1 channel.
* `gglnet`: GGL-Net's (MSDA-Net) code. Resize to `image_size` (default 512;
  256 for nudt_sirst), then with probability 0.5 three distinct ops of the
  albumentations `SomeOf` list, in random order: vertical / horizontal flip,
  transpose, rotate-90 (each p 0.5), brightness +-0.2*255 and contrast
  x[0.8, 1.2] (each p 0.2), rotate +-45 deg, shift +-10 %, scale x[0.8, 1.2]
  (each p 0.5; bilinear images, nearest masks, reflect-101 borders), Gaussian
  noise of variance 10..50 (p 0.2), two no-ops; /255; 3 channels (the grey
  image repeated: our datasets store grey, where the official code reads the
  PNG as RGB).

Evaluation (`eval_batches`): `resolution='native'` pads each image (after
normalisation, with zeros) to a multiple of `pad_multiple` and then to one of
at most `max_shapes` bucket shapes, carrying a `valid` mask of the real
pixels; an int resizes image (bilinear) and mask (nearest) to that square,
all pixels valid, and metrics are then computed at that resolution (the
MSDA-Net / GGL-Net protocol).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import PIL.Image

from irstd_jax.datasets import imageio

RECIPES = ('basicirstd', 'ganet', 'gglnet')

UNIT = (0.0, 255.0)
# BasicIRSTD's constants (utils.py: get_img_norm_cfg). They are not this
# project's SIRST copy's statistics (mean 111.98, std 27.63 over all 427
# images by the same rule), but they are what the published numbers used.
NORMALIZATIONS = {
    'unit': UNIT,
    'sirst_v1': (101.06385040283203, 34.619606018066406),
    'nudt_sirst': (107.80905151367188, 33.02274703979492),
    'irstd_1k': (87.4661865234375, 39.71953201293945),
}
_ALIASES = {
    'nuaa_sirst': 'sirst_v1', 'nuaa-sirst': 'sirst_v1', 'sirst': 'sirst_v1',
    'sirst-v1': 'sirst_v1', 'nudt-sirst': 'nudt_sirst',
    'irstd-1k': 'irstd_1k', 'irstd1k': 'irstd_1k',
}


def _canonical(name: str | None) -> str | None:
  if name is None:
    return None
  key = str(name).lower()
  return _ALIASES.get(key, key)


def normalization(name: str) -> tuple[float, float]:
  """(mean, std) in grey levels: 'unit' (/255) or a dataset's BasicIRSTD values.

  Known: 'unit', 'sirst_v1' (alias 'nuaa_sirst'), 'nudt_sirst', 'irstd_1k'.
  Other datasets: pass `mean_std=None` to the pipelines to use the dataset's
  own statistics (`Source.mean_std`, computed when it was built).
  """
  key = _canonical(name)
  if key not in NORMALIZATIONS:
    raise ValueError(
        f'No normalisation named {name!r}; known: {sorted(NORMALIZATIONS)}. '
        "For another dataset use mean_std=None (its own statistics) or 'unit'.")
  return NORMALIZATIONS[key]


def recipe_image_size(recipe: str, dataset: str | None) -> int | None:
  """The side the recipe resizes to (None: native resolution / crops)."""
  _check_recipe(recipe)
  dataset = _canonical(dataset)
  if recipe == 'ganet':
    return 512 if dataset == 'irstd_1k' else 256
  if recipe == 'gglnet':
    return 256 if dataset == 'nudt_sirst' else 512
  return None


def recipe_channels(recipe: str) -> int:
  _check_recipe(recipe)
  return 3 if recipe == 'gglnet' else 1


def _check_recipe(recipe: str) -> None:
  if recipe not in RECIPES:
    raise ValueError(f'Unknown recipe {recipe!r}; use one of {RECIPES}.')


def steps_per_epoch(source_len: int, batch_size: int) -> int:
  """Global batches per pass over the data (a PyTorch loader without drop_last).

  The training stream never drops examples: batches run across epoch
  boundaries, so `steps_per_epoch * batch_size` may exceed `source_len` by
  less than a batch.
  """
  if source_len < 1 or batch_size < 1:
    raise ValueError(f'steps_per_epoch({source_len}, {batch_size}): both '
                     'must be positive.')
  return max(1, math.ceil(source_len / batch_size))


# -- Data in RAM ---------------------------------------------------------------


class _Arrays:
  """A split decoded once: (H, W) uint8 images and {0, 1} masks."""

  def __init__(self, source: Sequence[dict]):
    self.images: list[np.ndarray] = []
    self.masks: list[np.ndarray] = []
    self.ids: list[str] = []
    for example in source:
      image = np.asarray(example['image'])
      mask = np.asarray(example['mask'])
      self.images.append(image[..., 0] if image.ndim == 3 else image)
      self.masks.append((mask[..., 0] if mask.ndim == 3 else mask) > 0)
      example_id = example.get('id', str(len(self.ids)))
      self.ids.append(example_id.decode() if isinstance(example_id, bytes)
                      else str(example_id))
    if not self.images:
      raise ValueError('The source is empty: nothing to train or evaluate on.')
    self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._resized: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.images)

  def target_pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    if index not in self._targets:
      self._targets[index] = np.nonzero(self.masks[index])
    return self._targets[index]

  def resized(self, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear, rounded to uint8 as cv2 does) and mask (nearest)."""
    key = (index, size)
    if key not in self._resized:
      self._resized[key] = (
          imageio.resize_image_uint8(self.images[index], (size, size)),
          imageio.resize_nearest(self.masks[index], (size, size)))
    return self._resized[key]


_ARRAYS_CACHE: 'weakref.WeakKeyDictionary[Any, _Arrays]' = (
    weakref.WeakKeyDictionary())


def _arrays(source) -> _Arrays:
  """Decodes a source once per source object (eval runs every epoch)."""
  if isinstance(source, _Arrays):
    return source
  try:
    cached = _ARRAYS_CACHE.get(source)
  except TypeError:  # Unhashable (e.g. a list): decode every time.
    return _Arrays(source)
  if cached is None:
    cached = _Arrays(source)
    try:
      _ARRAYS_CACHE[source] = cached
    except TypeError:  # Not weak-referenceable.
      pass
  return cached


def dataset_mean_std(source) -> tuple[float, float]:
  """Mean of per-image means and stds (BasicIRSTD's rule for new datasets)."""
  stats = getattr(source, 'mean_std', None)
  if stats:
    return float(stats[0]), float(stats[1])
  data = _arrays(source)
  means = [float(np.mean(image, dtype=np.float64)) for image in data.images]
  stds = [float(np.std(image, dtype=np.float64)) for image in data.images]
  return float(np.mean(means)), float(np.mean(stds))


def default_normalization(recipe: str, source) -> tuple[str, tuple[float, float]]:
  """The recipe's normalisation for `source`'s dataset, and its name.

  /255 ('unit') for ganet and gglnet; for basicirstd the dataset's BasicIRSTD
  values, or its own statistics ('dataset statistics') when it has none.
  """
  _check_recipe(recipe)
  name = _canonical(getattr(source, 'name', None))
  if recipe != 'basicirstd':
    return 'unit', UNIT
  if name in NORMALIZATIONS:
    return name, NORMALIZATIONS[name]
  return 'dataset statistics', dataset_mean_std(source)


def _resolve(recipe, source, image_size, num_channels, mean_std):
  _check_recipe(recipe)
  name = getattr(source, 'name', None)
  if mean_std is None:
    if recipe != 'basicirstd':
      mean_std = UNIT
    elif _canonical(name) in NORMALIZATIONS:
      mean_std = NORMALIZATIONS[_canonical(name)]
    else:
      mean_std = dataset_mean_std(source)
  mean, std = float(mean_std[0]), float(mean_std[1])
  if not std > 0:
    raise ValueError(f'mean_std={mean_std}: the std must be positive.')
  if image_size is None:
    image_size = recipe_image_size(recipe, name)
  if num_channels is None:
    num_channels = recipe_channels(recipe)
  if num_channels < 1:
    raise ValueError(f'num_channels={num_channels} must be >= 1.')
  return image_size, int(num_channels), (mean, std)


# -- Per-example recipes -------------------------------------------------------


def _basicirstd(data: _Arrays, index: int, rng: np.random.Generator, *,
                crop: int, mean: float, std: float):
  raw, mask = data.images[index], data.masks[index]
  height, width = raw.shape
  # BasicIRSTD pads the normalised image with zeros (bottom / right) up to
  # the crop size; only the crop is computed here.
  padded_h, padded_w = max(height, crop), max(width, crop)
  rows, cols = data.target_pixels(index)
  if rng.random() < 0.5 and len(rows):
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
  region = raw[top:top + inside_h, left:left + inside_w]
  patch[:inside_h, :inside_w] = (region.astype(np.float32) - mean) / std
  patch_mask[:inside_h, :inside_w] = mask[top:top + inside_h,
                                          left:left + inside_w]
  if rng.random() < 0.5:
    patch, patch_mask = patch[::-1], patch_mask[::-1]
  if rng.random() < 0.5:
    patch, patch_mask = patch[:, ::-1], patch_mask[:, ::-1]
  if rng.random() < 0.5:
    patch, patch_mask = patch.T, patch_mask.T
  return patch, patch_mask


def _ganet(data: _Arrays, index: int, rng, *, size: int, mean: float,
           std: float):
  del rng  # No augmentation in GaNet's code.
  image, mask = data.resized(index, size)
  return (image.astype(np.float32) - mean) / std, mask


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


def _gglnet_op(op: int, image, mask, rng: np.random.Generator):
  """One op of the MSDA-Net `A.SomeOf` list, each with its own probability."""
  if op == 0 and rng.random() < 0.5:      # VerticalFlip
    return image[::-1], mask[::-1]
  if op == 1 and rng.random() < 0.5:      # HorizontalFlip
    return image[:, ::-1], mask[:, ::-1]
  if op == 2 and rng.random() < 0.5:      # Transpose
    return image.T, mask.T
  if op == 3 and rng.random() < 0.5:      # RandomRotate90
    turns = int(rng.integers(4))
    return np.rot90(image, turns), np.rot90(mask, turns)
  if op == 4 and rng.random() < 0.2:      # RandomBrightness(0.2)
    return np.clip(image + rng.uniform(-0.2, 0.2) * 255, 0, 255), mask
  if op == 5 and rng.random() < 0.2:      # RandomContrast(0.2)
    return np.clip(image * rng.uniform(0.8, 1.2), 0, 255), mask
  if op == 6 and rng.random() < 0.5:      # Rotate(45)
    angle = np.deg2rad(rng.uniform(-45, 45))
    cos, sin = np.cos(angle), np.sin(angle)
    matrix, offset = _about_center(image.shape,
                                   np.array([[cos, -sin], [sin, cos]]))
    return _warp(np.ascontiguousarray(image), mask, matrix, offset)
  if op == 7 and rng.random() < 0.5:      # ShiftScaleRotate(shift 0.1)
    shift = rng.uniform(-0.1, 0.1, size=2) * np.asarray(image.shape)
    return _warp(np.ascontiguousarray(image), mask, np.eye(2), -shift)
  if op == 8 and rng.random() < 0.5:      # ShiftScaleRotate(scale 0.2)
    scale = rng.uniform(0.8, 1.2)
    matrix, offset = _about_center(image.shape, np.eye(2) / scale)
    return _warp(np.ascontiguousarray(image), mask, matrix, offset)
  if op == 9 and rng.random() < 0.2:      # GaussNoise(var 10..50)
    sigma = np.sqrt(rng.uniform(10, 50))
    noisy = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255), mask
  return image, mask                       # NoOp (10, 11) or not drawn.


def _gglnet(data: _Arrays, index: int, rng: np.random.Generator, *,
            size: int, mean: float, std: float):
  image, mask = data.resized(index, size)
  image = image.astype(np.float32)
  if rng.random() < 0.5:
    for op in rng.choice(12, size=3, replace=False):
      image, mask = _gglnet_op(int(op), image, mask, rng)
  return (np.asarray(image, np.float32) - mean) / std, mask


# -- Training iterator ---------------------------------------------------------


class TrainIterator(Iterator[dict]):
  """Infinite, deterministic, resumable host-local training batches.

  `next()` gives dict(image float32 (b, S, S, C), mask float32 (b, S, S, 1))
  with b = global batch // process count. `get_state()` is a JSON-able dict;
  `set_state()` continues with exactly the batch that would have come next.
  """

  def __init__(self, data: _Arrays, transform: Callable, *, recipe: str,
               size: int, global_batch: int, process_index: int,
               process_count: int,
               seed: int, num_channels: int, num_threads: int,
               prefetch: int):
    self._data = data
    self._transform = transform
    self._recipe = recipe
    self._size = int(size)
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self._seed = int(seed)
    self._num_channels = num_channels
    self._step = 0
    self._prefetch = max(0, int(prefetch))
    self._pool = (concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, num_threads), thread_name_prefix='irstd_input')
                  if self._prefetch else None)
    self._pending: collections.deque = collections.deque()
    self._permutation = functools.lru_cache(maxsize=4)(self._make_permutation)

  def _make_permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(
        self._seed, spawn_key=(0, epoch)))
    return rng.permutation(len(self._data))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step` (a pure function)."""
    start = step * self._global_batch + self._offset
    shape = (self._local_batch, self._size, self._size, 1)
    image = np.empty(shape, np.float32)
    mask = np.empty(shape, np.float32)
    for slot, position in enumerate(range(start, start + self._local_batch)):
      epoch, within = divmod(position, len(self._data))
      index = int(self._permutation(epoch)[within])
      rng = np.random.default_rng(np.random.SeedSequence(
          self._seed, spawn_key=(1, position)))
      one_image, one_mask = self._transform(self._data, index, rng)
      image[slot, :, :, 0] = one_image
      mask[slot, :, :, 0] = one_mask
    if self._num_channels > 1:  # Repeating once is ~5x faster than strided writes.
      image = np.repeat(image, self._num_channels, axis=-1)
    return {'image': image, 'mask': mask}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    step = self._step
    self._step += 1
    if self._pool is None:
      return self.batch(step)
    # Keep `prefetch` future batches in flight; each is a pure function of
    # its step, so prefetching never changes what comes out.
    while len(self._pending) <= self._prefetch:
      next_step = step + len(self._pending)
      self._pending.append(self._pool.submit(self.batch, next_step))
    return self._pending.popleft().result()

  def get_state(self) -> dict[str, Any]:
    return {'step': self._step, 'seed': self._seed,
            'num_examples': len(self._data),
            'global_batch_size': self._global_batch, 'recipe': self._recipe}

  def set_state(self, state: dict[str, Any]) -> None:
    expected = self.get_state()
    for key in ('seed', 'num_examples', 'global_batch_size', 'recipe'):
      if key in state and state[key] != expected[key]:
        raise ValueError(
            f'Iterator state has {key}={state[key]!r} but this iterator has '
            f'{expected[key]!r}: the checkpoint was written for other data or '
            'settings. Fix: restore with the same dataset split, batch size, '
            'recipe and seed.')
    self._cancel()
    self._step = int(state['step'])

  def _cancel(self):
    for future in self._pending:
      future.cancel()
    self._pending.clear()

  def close(self) -> None:
    self._cancel()
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def train_iterator(source, *, recipe: str, batch_size: int, seed: int,
                   crop_size: int = 256, image_size: int | None = None,
                   num_channels: int | None = None,
                   mean_std: Sequence[float] | None = None,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   num_threads: int = 1, prefetch: int = 2) -> TrainIterator:
  """This process's share of the training batches of `recipe`.

  Args:
    source: a `datasets.load` source (or any sequence of example dicts).
    recipe: 'basicirstd', 'ganet' or 'gglnet' (see the module docstring).
    batch_size: the global batch size (over all processes).
    seed: the data seed (order and augmentation).
    crop_size: basicirstd's patch side.
    image_size: ganet / gglnet resize side (None: the recipe's default for
      the dataset, see `recipe_image_size`).
    num_channels: channels of `image` (None: 1, or 3 for gglnet); the grey
      image is repeated.
    mean_std: (mean, std) in grey levels; None: /255 for ganet / gglnet, the
      dataset's BasicIRSTD values (or its own statistics) for basicirstd.
    process_index, process_count: default `jax.process_index()` / `_count()`.
    num_threads, prefetch: background threads and batches computed ahead
      (prefetch=0: computed on `next()`); the batches do not depend on them.

  Returns:
    A `TrainIterator` (infinite; `get_state` / `set_state`).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                     f'the process count ({process_count}).')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, {process_count}).')
  data = _arrays(source)
  image_size, num_channels, (mean, std) = _resolve(
      recipe, source, image_size, num_channels, mean_std)
  if recipe == 'basicirstd':
    if crop_size < 1:
      raise ValueError(f'crop_size={crop_size} must be positive.')
    transform = functools.partial(_basicirstd, crop=int(crop_size), mean=mean,
                                  std=std)
  else:
    transform = functools.partial(_ganet if recipe == 'ganet' else _gglnet,
                                  size=int(image_size), mean=mean, std=std)
  size = crop_size if recipe == 'basicirstd' else image_size
  return TrainIterator(data, transform, recipe=recipe, size=size,
                       global_batch=batch_size,
                       process_index=process_index,
                       process_count=process_count, seed=seed,
                       num_channels=num_channels, num_threads=num_threads,
                       prefetch=prefetch)


# -- Evaluation ----------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def bucket_shapes(shapes: Sequence[tuple[int, int]], max_shapes: int
                  ) -> list[tuple[int, int]]:
  """At most `max_shapes` padded shapes that every shape fits into.

  Starts from the distinct shapes and merges, greedily, the two buckets whose
  union (elementwise max) adds the fewest padded pixels over their images.
  """
  counts = collections.Counter(tuple(s) for s in shapes)
  buckets = {shape: count for shape, count in counts.items()}
  while len(buckets) > max(1, max_shapes):
    best = None
    keys = sorted(buckets)
    for i, a in enumerate(keys):
      for b in keys[i + 1:]:
        merged = (max(a[0], b[0]), max(a[1], b[1]))
        area = merged[0] * merged[1]
        cost = (buckets[a] * (area - a[0] * a[1])
                + buckets[b] * (area - b[0] * b[1]))
        # Merging into an existing bucket shape costs its images nothing.
        if best is None or cost < best[0]:
          best = (cost, a, b, merged)
    _, a, b, merged = best
    count = buckets.pop(a) + buckets.pop(b)
    buckets[merged] = buckets.get(merged, 0) + count
  return sorted(buckets)


def _smallest_fit(shape, buckets):
  fits = [b for b in buckets if b[0] >= shape[0] and b[1] >= shape[1]]
  return min(fits, key=lambda b: (b[0] * b[1], b))


def eval_batches(source, *, recipe: str, batch_size: int,
                 resolution: str | int = 'native', pad_multiple: int = 32,
                 num_channels: int | None = None,
                 mean_std: Sequence[float] | None = None,
                 max_shapes: int = 4) -> Iterator[dict[str, Any]]:
  """Fixed-size evaluation batches of the whole split, every image once.

  Yields dict(image float32 (B, H, W, C), mask float32 (B, H, W) in {0, 1},
  valid bool (B, H, W), id list of B str). The last batch of each shape is
  filled with all-invalid entries (id ''), so every batch has B entries.

  Args:
    source: a `datasets.load` source (or a sequence of example dicts).
    recipe: picks the normalisation, channels and the 'recipe' resolution.
    batch_size: B.
    resolution: 'native' (pad to `pad_multiple`, then to one of at most
      `max_shapes` shapes, so a mixed-size set compiles a handful of times),
      an int side (resize: image bilinear, mask nearest), or 'recipe' (the
      recipe's training size; native for basicirstd).
    pad_multiple: native-mode padding multiple (32 for 5 poolings).
    num_channels, mean_std: as in `train_iterator`.
    max_shapes: native-mode bucket count.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be positive.')
  data = _arrays(source)
  image_size, num_channels, (mean, std) = _resolve(
      recipe, source, None, num_channels, mean_std)
  if resolution == 'recipe':
    resolution = 'native' if image_size is None else image_size
  if resolution == 'native':
    padded = [(_round_up(i.shape[0], pad_multiple),
               _round_up(i.shape[1], pad_multiple)) for i in data.images]
    buckets = bucket_shapes(padded, max_shapes)
    assigned = [_smallest_fit(s, buckets) for s in padded]
    groups = [(b, [i for i, a in enumerate(assigned) if a == b])
              for b in buckets]
  else:
    side = int(resolution)
    if side < 1:
      raise ValueError(f'resolution={resolution!r}: use "native" or a '
                       'positive int.')
    groups = [((side, side), list(range(len(data))))]
  for (height, width), indices in groups:
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      image = np.zeros((batch_size, height, width), np.float32)
      mask = np.zeros((batch_size, height, width), np.float32)
      valid = np.zeros((batch_size, height, width), bool)
      ids = [''] * batch_size
      for slot, index in enumerate(chunk):
        if resolution == 'native':
          pixels, truth = data.images[index], data.masks[index]
        else:
          pixels, truth = data.resized(index, height)
        h, w = pixels.shape
        image[slot, :h, :w] = (pixels.astype(np.float32) - mean) / std
        mask[slot, :h, :w] = truth
        valid[slot, :h, :w] = True
        ids[slot] = data.ids[index]
      image = image[..., None]
      if num_channels > 1:
        image = np.repeat(image, num_channels, axis=-1)
      yield {'image': image, 'mask': mask, 'valid': valid, 'id': ids}


# -- Devices -------------------------------------------------------------------


def shard_batch(batch: dict[str, Any], sharding) -> dict[str, Any]:
  """Host-local numpy batches -> global jax.Arrays split along the batch axis.

  Every process passes its own slice; `sharding` is typically
  `NamedSharding(mesh, P('data'))`. Entries that are not arrays (ids) are
  returned unchanged.
  """
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  out = {}
  for key, value in batch.items():
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) >= 1:
      out[key] = jax.make_array_from_process_local_data(sharding,
                                                        np.asarray(value))
    else:
      out[key] = value
  return out
