"""Training and evaluation batches from a split held in RAM.

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

What happens to each example is the recipe's (`recipes`); the sizes, channels
and normalisation come concrete from `recipes.resolve`.

Evaluation (`eval_batches`): `resolution='native'` pads each image (after
normalisation, with zeros, at the bottom and right) to a multiple of
`pad_multiple`, as the reference code does image by image, and batches images
of equal padded shape together (`max_shapes` > 0 instead pads into at most
that many bucket shapes: fewer compilations, but the models' global pooling
and GGL-Net's align_corners upsampling then see extra zeros), carrying a
`valid` mask of the real pixels; an int resizes image (bilinear) and mask (nearest) to that square,
all pixels valid, and metrics are then computed at that resolution (the
MSDA-Net / GGL-Net protocol).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import sys
import weakref
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from irstd_jax import recipes


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
    """`recipes.resize` of example `index`, kept (every epoch resizes it)."""
    key = (index, size)
    if key not in self._resized:
      self._resized[key] = recipes.resize(self.images[index],
                                          self.masks[index], size)
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


def _train_transform(recipe: str, mean: float, std: float,
                     positive_probability: float) -> Callable:
  """(data, index, rng, size) -> one training example of `recipe`, from the cache."""
  if recipe == 'pal':
    def pal_crop(data: _Arrays, index: int, rng: np.random.Generator, size: int):
      return recipes.pal(data.images[index], data.masks[index], rng, crop=size,
                         mean=mean, std=std)
    return pal_crop
  if not recipes.resizes(recipe):
    def crop(data: _Arrays, index: int, rng: np.random.Generator, size: int):
      return recipes.basicirstd(data.images[index], data.masks[index], rng,
                                crop=size, mean=mean, std=std,
                                targets=data.target_pixels(index),
                                positive_probability=positive_probability)
    return crop
  augment = {'ganet': recipes.ganet, 'gglnet': recipes.gglnet}[recipe]

  def resized(data: _Arrays, index: int, rng: np.random.Generator, size: int):
    image, mask = data.resized(index, size)
    return augment(image, mask, rng, mean=mean, std=std)
  return resized


def _concrete(**values) -> None:
  """A clear error for a value left to be resolved (`recipes.resolve`)."""
  for name, value in values.items():
    if value is None:
      raise ValueError(f'{name}=None: the input pipeline takes concrete values; '
                       'get them from recipes.resolve(recipe, dataset, ...).')


# -- Training iterator ---------------------------------------------------------


class TrainIterator(Iterator[dict]):
  """Infinite, deterministic, resumable host-local training batches.

  `next()` gives dict(image float32 (b, S, S, C), mask float32 (b, S, S, 1))
  with b = global batch // process count; S is `size`, or `final_size` from
  step `final_from_step` on, where `final_transform` (if given) replaces
  `transform`. `get_state()` is a JSON-able dict;
  `set_state()` continues with exactly the batch that would have come next.
  """

  def __init__(self, data: _Arrays, transform: Callable, *, recipe: str,
               size: int, global_batch: int, process_index: int,
               process_count: int,
               seed: int, num_channels: int, num_threads: int,
               prefetch: int, final_size: int | None = None,
               final_from_step: int | None = None,
               final_transform: Callable | None = None):
    self._data = data
    self._transform = transform
    self._final_transform = final_transform or transform
    self._recipe = recipe
    self._size = int(size)
    self._final_size = int(final_size) if final_size else self._size
    self._final_from_step = (int(final_from_step) if final_from_step is not None
                             else sys.maxsize)
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
    size = self.size_at(step)
    transform = (self._final_transform if step >= self._final_from_step
                 else self._transform)
    shape = (self._local_batch, size, size, 1)
    image = np.empty(shape, np.float32)
    mask = np.empty(shape, np.float32)
    for slot, position in enumerate(range(start, start + self._local_batch)):
      epoch, within = divmod(position, len(self._data))
      index = int(self._permutation(epoch)[within])
      rng = np.random.default_rng(np.random.SeedSequence(
          self._seed, spawn_key=(1, position)))
      one_image, one_mask = transform(self._data, index, rng, size)
      image[slot, :, :, 0] = one_image
      mask[slot, :, :, 0] = one_mask
    if self._num_channels > 1:  # Repeating once is ~5x faster than strided writes.
      image = np.repeat(image, self._num_channels, axis=-1)
    return {'image': image, 'mask': mask}

  def size_at(self, step: int) -> int:
    """The side of the training images of global batch `step`."""
    return self._final_size if step >= self._final_from_step else self._size

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
                   size: int, num_channels: int, mean_std: Sequence[float],
                   process_index: int | None = None,
                   process_count: int | None = None,
                   num_threads: int = 1, prefetch: int = 2,
                   positive_crop_probability: float = 0.5,
                   final_size: int | None = None,
                   final_from_step: int | None = None,
                   final_positive_crop_probability: float | None = None
                   ) -> TrainIterator:
  """This process's share of the training batches of `recipe`.

  Args:
    source: a `datasets.load` source (or any sequence of example dicts).
    recipe: one of `recipes.RECIPES`.
    batch_size: the global batch size (over all processes).
    seed: the data seed (order and augmentation).
    size: the side of the training images: basicirstd's and pal's crop,
      ganet / gglnet's resize (`recipes.resolve(...).train_size`).
    num_channels: channels of `image`; the grey image is repeated.
    mean_std: (mean, std) in grey levels.
    process_index, process_count: default `jax.process_index()` / `_count()`.
    num_threads, prefetch: background threads and batches computed ahead
      (prefetch=0: computed on `next()`); the batches do not depend on them.
    positive_crop_probability: basicirstd's chance of a crop around a target
      pixel instead of a uniform one (its code's 0.5).
    final_size, final_from_step: from global step `final_from_step` on, crop
      (or resize) to `final_size` instead of `size`, at the same batch size:
      small crops learn the targets fast, larger ones then show the model the
      background context of whole images (None: `size` throughout).
    final_positive_crop_probability: from `final_from_step` on, basicirstd's
      chance of a crop around a target instead (None: the same throughout);
      GaNet's `:cpu` keeps every larger crop on a target, so that the last
      epochs clear false alarms without losing faint targets.

  Returns:
    A `TrainIterator` (infinite; `get_state` / `set_state`).
  """
  recipes.check(recipe)
  _concrete(size=size, num_channels=num_channels, mean_std=mean_std)
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                     f'the process count ({process_count}).')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, {process_count}).')
  if size < 1 or num_channels < 1 or not mean_std[1] > 0:
    raise ValueError(f'size={size}, num_channels={num_channels} and the std of '
                     f'mean_std={tuple(mean_std)} must be positive.')
  for name, value in (('positive_crop_probability', positive_crop_probability),
                      ('final_positive_crop_probability', final_positive_crop_probability)):
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f'{name}={value} must lie in [0, 1] (0.5 is BasicIRSTD\'s).')
  if final_size is not None and (final_size < 1 or final_from_step is None
                                 or final_from_step < 0):
    raise ValueError(f'final_size={final_size} must be positive and come with '
                     f'final_from_step >= 0 (got {final_from_step}).')
  if final_positive_crop_probability is not None and (
      final_from_step is None or final_from_step < 0):
    raise ValueError(f'final_positive_crop_probability={final_positive_crop_probability} '
                     f'must come with final_from_step >= 0 (got {final_from_step}).')
  data = _arrays(source)
  transform = _train_transform(recipe, float(mean_std[0]), float(mean_std[1]),
                               float(positive_crop_probability))
  final_transform = (None if final_positive_crop_probability is None else _train_transform(
      recipe, float(mean_std[0]), float(mean_std[1]), float(final_positive_crop_probability)))
  return TrainIterator(data, transform, recipe=recipe, size=size,
                       final_size=final_size, final_from_step=final_from_step,
                       final_transform=final_transform,
                       global_batch=batch_size,
                       process_index=process_index,
                       process_count=process_count, seed=seed,
                       num_channels=int(num_channels), num_threads=num_threads,
                       prefetch=prefetch)


# -- Evaluation ----------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def bucket_shapes(shapes: Sequence[tuple[int, int]], max_shapes: int
                  ) -> list[tuple[int, int]]:
  """At most `max_shapes` padded shapes that every shape fits into.

  Starts from the distinct shapes and merges, greedily, the two buckets whose
  union (elementwise max) adds the fewest padded pixels over their images.
  `max_shapes` <= 0: the distinct shapes themselves (each image padded alone).
  """
  counts = collections.Counter(tuple(s) for s in shapes)
  buckets = {shape: count for shape, count in counts.items()}
  while 0 < max_shapes < len(buckets):
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


# Native evaluation runs the model at each image's own padded shape but the
# metrics on at most this many canvas shapes: every compiled program costs
# XLA:CPU hundreds of memory mappings (the metrics' programs thousands), and
# Linux's default limit (vm.max_map_count = 65530) ends the process with
# 'LLVM ERROR: Unable to allocate section memory' after about 26 of
# SIRST-v1's 34 shapes when every stage compiles per shape. The metrics
# ignore pixels outside `valid`, so the canvas changes no number.
METRIC_CANVASES = 4


def _smallest_fit(shape, buckets):
  fits = [b for b in buckets if b[0] >= shape[0] and b[1] >= shape[1]]
  return min(fits, key=lambda b: (b[0] * b[1], b))


def eval_batches(source, *, batch_size: int, resolution: str | int,
                 num_channels: int, mean_std: Sequence[float],
                 pad_multiple: int = 32,
                 max_shapes: int = 0,
                 pad_value: float = 0.0) -> Iterator[dict[str, Any]]:
  """Fixed-size evaluation batches of the whole split, every image once.

  Yields dict(image float32 (B, H, W, C), mask float32 (B, H, W) in {0, 1},
  valid bool (B, H, W), id list of B str, canvas (Hc, Wc) >= (H, W)). The
  last batch of each shape is filled with all-invalid entries (id ''), so
  every batch has B entries. `canvas` is the shape the metrics may pad the
  batch to (one of at most `METRIC_CANVASES` shapes per split, see there).

  Args:
    source: a `datasets.load` source (or a sequence of example dicts).
    batch_size: B.
    resolution: 'native' (each image padded to `pad_multiple`; batches of
      equal padded shape) or an int side (resize: image bilinear, mask
      nearest); `recipes.resolve(...).eval_resolution`.
    num_channels: channels of `image`; the grey image is repeated.
    mean_std: (mean, std) in grey levels.
    pad_multiple: native-mode padding multiple (32 for 5 poolings).
    max_shapes: native mode: 0 pads each image alone (the reference's
      protocol, one compilation per distinct padded shape); N > 0 pads into
      at most N bucket shapes (faster to compile, not the reference's numbers).
    pad_value: what native-mode padding holds, in normalised units: 0
      (BasicIRSTD pads after normalising) or `pad_value_for('black', ...)`
      (PAL pads the raw image with grey level 0).
  """
  _concrete(resolution=resolution, num_channels=num_channels,
            mean_std=mean_std)
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be positive.')
  data = _arrays(source)
  mean, std = float(mean_std[0]), float(mean_std[1])
  if resolution == 'native':
    padded = [(_round_up(i.shape[0], pad_multiple),
               _round_up(i.shape[1], pad_multiple)) for i in data.images]
    buckets = bucket_shapes(padded, max_shapes)
    assigned = [_smallest_fit(s, buckets) for s in padded]
    groups = [(b, [i for i, a in enumerate(assigned) if a == b])
              for b in buckets]
    canvases = bucket_shapes(assigned, METRIC_CANVASES)
  else:
    if isinstance(resolution, str) or int(resolution) < 1:
      raise ValueError(f'resolution={resolution!r}: use "native" or a '
                       'positive int (recipes.resolve gives one).')
    side = int(resolution)
    groups = [((side, side), list(range(len(data))))]
    canvases = [(side, side)]
  for (height, width), indices in groups:
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      image = np.full((batch_size, height, width), pad_value, np.float32)
      mask = np.zeros((batch_size, height, width), np.float32)
      valid = np.zeros((batch_size, height, width), bool)
      ids = [''] * batch_size
      for slot, index in enumerate(chunk):
        if resolution == 'native':
          pixels, truth = data.images[index], data.masks[index]
        else:
          pixels, truth = data.resized(index, height)
        h, w = pixels.shape
        image[slot, :h, :w] = recipes.normalize(pixels, mean, std)
        mask[slot, :h, :w] = truth
        valid[slot, :h, :w] = True
        ids[slot] = data.ids[index]
      image = image[..., None]
      if num_channels > 1:
        image = np.repeat(image, num_channels, axis=-1)
      yield {'image': image, 'mask': mask, 'valid': valid, 'id': ids,
             'canvas': _smallest_fit((height, width), canvases)}


PADS = ('zero', 'black')


def pad_value_for(pad: str, mean_std: Sequence[float]) -> float:
  """The normalised value of evaluation padding: 'zero' (0 after normalising:
  BasicIRSTD, GaNet) or 'black' (grey level 0 before normalising: PAL)."""
  if pad == 'zero':
    return 0.0
  if pad == 'black':
    return float(recipes.normalize(np.zeros((), np.uint8), *mean_std))
  raise ValueError(f'eval.pad={pad!r}: use one of {PADS}.')


# -- Devices -------------------------------------------------------------------


def shard_batch(batch: dict[str, Any], sharding) -> dict[str, Any]:
  """Host-local numpy batches -> global jax.Arrays split along the batch axis.

  Every process passes its own slice; `sharding` is typically
  `NamedSharding(mesh, P('data'))`. Entries that are not arrays (ids) are
  returned unchanged.
  """
  out = {}
  for key, value in batch.items():
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) >= 1:
      out[key] = jax.make_array_from_process_local_data(sharding,
                                                        np.asarray(value))
    else:
      out[key] = value
  return out
