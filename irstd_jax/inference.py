"""Detection on new images: a `Predictor` from a workdir or official weights.

    predictor = Predictor.from_workdir('workdirs/quick', checkpoint='best')
    predictor = Predictor.from_torch('ganet', 'GaNet.pth')   # official weights
    probs = predictor.predict(image)          # (H, W) float32 in [0, 1]
    found = predictor.detect(images)          # probabilities, masks, targets

Images of any size, 8- or 16-bit, grey or RGB are turned into what the model
was trained on: grey by the datasets' rule (`datasets.imageio`: luma of
colour, 16-bit min-max stretched), normalised with the checkpoint's mean and
std, repeated to the model's channels. At native resolution they are
zero-padded at the bottom / right to a multiple of 32, after normalisation,
as the evaluation pads them (each image alone by default; `max_shapes` > 0
pads a known set into at most that many buckets), so a split predicted
here gives the probabilities `main --mode=eval` scores. Batches are sharded
over the devices, padded to a fixed size so that every batch of a shape
reuses one compilation.

Targets are the 8-connected components of `probs > threshold`, as the
metrics count them (`find_targets`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Iterable, Iterator, Sequence

from flax import nnx
import jax
import ml_collections
import numpy as np
import optax
import PIL.Image
from scipy import ndimage

from irstd_jax import checkpointing
from irstd_jax import config_lib
from irstd_jax import convert
from irstd_jax import input_pipeline
from irstd_jax import optim
from irstd_jax import recipes
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax.datasets import imageio
from irstd_jax.evaluation import evaluator

# 16-bit probability maps store round(p * PROB_SCALE).
PROB_SCALE = 65535
# One row per target: its index in the image, centroid (pixel centres,
# 0-based), pixel count, bounding box (left, top, width, height) and the
# probabilities over its pixels.
TARGET_FIELDS = ('target', 'centroid_x', 'centroid_y', 'area', 'x', 'y', 'width',
                 'height', 'peak_prob', 'mean_prob')
_EIGHT_CONNECTED = np.ones((3, 3), bool)


# ---------------------------------------------------------------------------
# Images in, targets out.

def to_gray(image: Any, *, high_bit_depth: str = 'minmax') -> np.ndarray:
  """An image array as the (H, W) uint8 grey the models see.

  The rule of `datasets.imageio` for files: uint8 grey as is; RGB(A) by
  ITU-R 601 luma (Pillow's); uint16, other integers and floats stretched from
  their own min / max to 0..255 ('minmax') or, for uint16, divided by 257
  ('shift'). A bool array is 0 / 255.
  """
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    if array.dtype == np.uint8:
      return array
    if array.dtype == bool:
      return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
      pil = PIL.Image.fromarray(array)
    elif array.dtype.kind in 'iu':
      pil = PIL.Image.fromarray(array.astype(np.int32))
    elif array.dtype.kind == 'f':
      pil = PIL.Image.fromarray(array.astype(np.float32))
    else:
      raise ValueError(f'Cannot use an image of dtype {array.dtype}.')
    return imageio.to_gray(pil, high_bit_depth=high_bit_depth)
  if array.ndim == 3 and array.shape[-1] in (3, 4):
    if array.dtype == np.uint8:
      return imageio.to_gray(PIL.Image.fromarray(array), high_bit_depth=high_bit_depth)
    rgb = array[..., :3].astype(np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    mode = 'I;16' if array.dtype == np.uint16 else 'F'
    if high_bit_depth not in imageio.HIGH_BIT_DEPTH_RULES:
      raise ValueError(f'high_bit_depth={high_bit_depth!r}: use one of '
                       f'{imageio.HIGH_BIT_DEPTH_RULES}.')
    return imageio._high_bit_to_uint8(luma, mode, high_bit_depth)  # pylint: disable=protected-access
  raise ValueError(f'An image must be (H, W) grey or (H, W, 3|4) colour; got shape '
                   f'{array.shape}.')


def read_image(path: str, *, high_bit_depth: str = 'minmax') -> np.ndarray:
  """A file as (H, W) uint8 grey; ValueError naming the file if it cannot be read."""
  try:
    with PIL.Image.open(path) as image:
      image.load()
      return imageio.to_gray(image, high_bit_depth=high_bit_depth)
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'cannot read {path}: {e}') from e


def image_size(path: str) -> tuple[int, int]:
  """(H, W) from the file's header, without decoding the pixels."""
  try:
    with PIL.Image.open(path) as image:
      width, height = image.size
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f'cannot read {path}: {e}') from e
  return height, width


def find_targets(mask: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
  """The 8-connected components of `mask` as dicts of TARGET_FIELDS.

  Components are numbered in label order (raster order of their first
  pixel), the order and connectivity of the metrics' Pd.
  """
  labels, count = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
  if not count:
    return []
  probs = np.asarray(probs, np.float64)
  ys, xs = np.nonzero(labels)
  owner = labels[ys, xs]
  area = np.bincount(owner, minlength=count + 1)[1:]
  sum_y = np.bincount(owner, ys, minlength=count + 1)[1:]
  sum_x = np.bincount(owner, xs, minlength=count + 1)[1:]
  values = probs[ys, xs]
  total = np.bincount(owner, values, minlength=count + 1)[1:]
  peak = np.full(count + 1, -np.inf)
  np.maximum.at(peak, owner, values)
  targets = []
  for i, (rows, cols) in enumerate(ndimage.find_objects(labels)):
    targets.append({
        'target': i, 'centroid_x': float(sum_x[i] / area[i]),
        'centroid_y': float(sum_y[i] / area[i]), 'area': int(area[i]),
        'x': int(cols.start), 'y': int(rows.start), 'width': int(cols.stop - cols.start),
        'height': int(rows.stop - rows.start), 'peak_prob': float(peak[i + 1]),
        'mean_prob': float(total[i] / area[i])})
  return targets


def probs_to_uint16(probs: np.ndarray, threshold: float) -> np.ndarray:
  """round(p * 65535), nudged by one where needed so that the map read back
  (`uint16_to_probs`) and thresholded gives the same mask as `probs`."""
  probs = np.asarray(probs, np.float32)
  q = np.clip(np.round(probs.astype(np.float64) * PROB_SCALE), 0, PROB_SCALE).astype(np.int64)
  t = np.float32(threshold)
  above = probs > t
  back = uint16_to_probs(q) > t
  q = np.where(above & ~back, q + 1, np.where(~above & back, q - 1, q))
  return np.clip(q, 0, PROB_SCALE).astype(np.uint16)


def uint16_to_probs(q: np.ndarray) -> np.ndarray:
  """A 16-bit probability map back to float32 probabilities."""
  return np.asarray(q).astype(np.float32) / np.float32(PROB_SCALE)


@dataclasses.dataclass
class Detection:
  """What `Predictor.detect` finds in one image."""
  probs: np.ndarray           # (H, W) float32
  mask: np.ndarray            # (H, W) bool, probs > threshold
  targets: list[dict[str, Any]]  # find_targets(mask, probs)


# ---------------------------------------------------------------------------
# The predictor.

def _forward(model_state: Any, images: jax.Array, *, graphdef: Any) -> jax.Array:
  return evaluator.predict_probs(nnx.merge(graphdef, model_state), images)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


class Predictor:
  """A model ready for new images: preprocessing, batching, devices.

  Args:
    model: an irstd_jax model (any mode; it is put in eval mode).
    mean, std: normalisation in grey levels, (x - mean) / std.
    num_channels: the model's input channels (default: its `in_channels`).
    threshold: probability threshold of masks and targets (strict >).
    batch_size: images per batch (rounded up to the device count).
    pad_multiple: native resolution pads to a multiple of this.
    max_shapes: 0 pads each image alone to `pad_multiple` (the evaluation's
      default and the reference's); N > 0 pads a set of known sizes into at
      most N shapes (fewer compilations, slightly different maps).
    resolution: 'native', or an int side: images are resized to it (as a
      resized evaluation does) and the probabilities resized back.
    high_bit_depth: 16-bit rule of `to_gray` ('minmax' or 'shift').
    devices: devices to shard batches over (default: all).
    description: what the model is (recorded with predictions).
  """

  def __init__(self, model: nnx.Module, *, mean: float = 0.0, std: float = 255.0,
               num_channels: int | None = None, threshold: float = 0.5,
               batch_size: int = 8, pad_multiple: int = 32, max_shapes: int = 0,
               resolution: str | int = 'native', high_bit_depth: str = 'minmax',
               devices: Sequence[jax.Device] | None = None,
               description: dict[str, Any] | None = None):
    if not std > 0:
      raise ValueError(f'std={std} must be positive.')
    if resolution != 'native' and (isinstance(resolution, str) or int(resolution) < 1):
      raise ValueError(f'resolution={resolution!r}: use "native" or a positive int.')
    if high_bit_depth not in imageio.HIGH_BIT_DEPTH_RULES:
      raise ValueError(f'high_bit_depth={high_bit_depth!r}: use one of '
                       f'{imageio.HIGH_BIT_DEPTH_RULES}.')
    self.mesh = sharding.create_mesh(devices)
    self.mean, self.std = float(mean), float(std)
    self.num_channels = int(num_channels or getattr(model, 'in_channels', 1))
    self.threshold = float(threshold)
    self.batch_size = _round_up(max(1, int(batch_size)), self.mesh.size)
    self.pad_multiple = int(pad_multiple)
    self.max_shapes = int(max_shapes)
    self.resolution = resolution if resolution == 'native' else int(resolution)
    self.high_bit_depth = high_bit_depth
    self.description = dict(description or {'model': type(model).__name__})
    self.model = model
    # Seconds spent compiling (the first batch of each shape), for speed reports.
    self.compile_seconds = 0.0
    self._compiled: set[tuple[int, int]] = set()
    model.eval()  # Running batch-norm statistics; the model stays in eval mode.
    graphdef = nnx.graphdef(model)
    self.state = jax.device_put(nnx.to_pure_dict(nnx.state(model)),
                                sharding.replicated(self.mesh))
    self._forward = functools.partial(
        steps.jitted(_forward, self.mesh.devices.flat[0].platform,
                     static_argnames=('graphdef',)), graphdef=graphdef)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str | int = 'best',
                   **overrides) -> 'Predictor':
    """A checkpoint of a training run, with its normalisation and threshold."""
    model, settings = load_workdir(workdir, checkpoint)
    return cls(model, **{**settings, **overrides})

  @classmethod
  def from_torch(cls, name: str, weights: Any, *, model_options: dict[str, Any] | None = None,
                 **overrides) -> 'Predictor':
    """Official PyTorch weights (.pth, .npz, or a state dict) of model `name`."""
    model, settings = load_torch(name, weights, **(model_options or {}))
    return cls(model, **{**settings, **overrides})

  # -- Arrays -----------------------------------------------------------------

  def predict(self, images: Any) -> Any:
    """Probabilities (H, W) float32 of one image, or a list for several.

    One image: a (H, W) or (H, W, C) array. Several: a list of them, or an
    (N, H, W) / (N, H, W, C) array.
    """
    single, batch = _as_list(images)
    probs = self._in_order(batch)
    return probs[0] if single else probs

  def detect(self, images: Any) -> Any:
    """`Detection`s (probabilities, mask, targets) of one image or a list."""
    single, batch = _as_list(images)
    found = []
    for probs in self._in_order(batch):
      mask = probs > np.float32(self.threshold)
      found.append(Detection(probs, mask, find_targets(mask, probs)))
    return found[0] if single else found

  def _in_order(self, batch: list) -> list[np.ndarray]:
    """The probabilities of `batch`, in its order (`stream` yields them batch
    by batch, grouped by padded shape)."""
    done = {key: probs for key, _, probs in self.stream(
        enumerate(batch), shapes=[np.shape(i)[:2] for i in batch])}
    return [done[i] for i in range(len(batch))]

  # -- Streams ----------------------------------------------------------------

  def prepare(self, image: Any) -> np.ndarray:
    """An image array as the (H, W) uint8 grey the network gets."""
    return to_gray(image, high_bit_depth=self.high_bit_depth)

  def buckets(self, shapes: Iterable[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """The padded shapes a set of image sizes is compiled for."""
    if self.resolution != 'native' or shapes is None:
      return []
    padded = [(_round_up(h, self.pad_multiple), _round_up(w, self.pad_multiple))
              for h, w in shapes]
    return input_pipeline.bucket_shapes(padded, self.max_shapes) if padded else []

  def network_shape(self, shape: tuple[int, int], buckets: Sequence[tuple[int, int]] = ()
                    ) -> tuple[int, int]:
    """The padded (H, W) the network runs an image of `shape` at."""
    if self.resolution != 'native':
      side = _round_up(self.resolution, self.pad_multiple)
      return side, side
    padded = (_round_up(shape[0], self.pad_multiple), _round_up(shape[1], self.pad_multiple))
    fits = [b for b in buckets if b[0] >= padded[0] and b[1] >= padded[1]]
    return min(fits, key=lambda b: (b[0] * b[1], b)) if fits else padded

  def stream(self, items: Iterable[tuple[Any, Any]],
             shapes: Iterable[tuple[int, int]] | None = None
             ) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, grey, probs) for each (key, image) of `items`, as batches finish.

    Images are grouped by padded shape into full batches; one batch runs on
    the devices while the host prepares the next. Results come in batch
    order, which is the input order when all images share a padded shape.

    Args:
      items: (key, image array) pairs; read lazily.
      shapes: the (H, W) of all the images to come, when known: with
        `max_shapes` > 0 at most that many padded shapes are then compiled
        (the evaluation's buckets). Otherwise each image's own padded shape.
    """
    buckets = self.buckets(shapes)
    groups: dict[tuple[int, int], list] = {}
    pending = None
    for key, image in items:
      gray = self.prepare(image)
      shape = self.network_shape(gray.shape, buckets)
      group = groups.setdefault(shape, [])
      group.append((key, gray))
      if len(group) == self.batch_size:
        launched = self._launch(shape, groups.pop(shape))
        if pending is not None:
          yield from self._finish(*pending)
        pending = launched
    for shape in list(groups):
      launched = self._launch(shape, groups.pop(shape))
      if pending is not None:
        yield from self._finish(*pending)
      pending = launched
    if pending is not None:
      yield from self._finish(*pending)

  def _launch(self, shape, group):
    """Dispatches one batch (asynchronously)."""
    height, width = shape
    batch = np.zeros((self.batch_size, height, width, 1), np.float32)
    for slot, (_, gray) in enumerate(group):
      if self.resolution != 'native':
        gray = imageio.resize_image_uint8(gray, (self.resolution, self.resolution))
      h, w = gray.shape
      batch[slot, :h, :w, 0] = recipes.normalize(gray, self.mean, self.std)
    if self.num_channels > 1:
      batch = np.repeat(batch, self.num_channels, axis=-1)
    images = sharding.global_array(batch, sharding.batch_sharded(self.mesh))
    if shape in self._compiled:
      return group, self._forward(self.state, images)
    started = time.perf_counter()  # A new shape compiles, synchronously.
    outputs = self._forward(self.state, images)
    self.compile_seconds += time.perf_counter() - started
    self._compiled.add(shape)
    return group, outputs

  def _finish(self, group, outputs):
    probs = sharding.to_host(outputs)
    for slot, (key, gray) in enumerate(group):
      h, w = gray.shape
      if self.resolution != 'native':
        side = self.resolution
        prob = np.clip(imageio.resize_bilinear(probs[slot, :side, :side], (h, w)), 0, 1)
      else:
        prob = probs[slot, :h, :w]
      yield key, gray, np.ascontiguousarray(prob, np.float32)


def _as_list(images: Any) -> tuple[bool, list]:
  if isinstance(images, (list, tuple)):
    return False, list(images)
  array = np.asarray(images)
  if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
    return True, [array]
  if array.ndim in (3, 4):
    return False, list(array)
  raise ValueError(f'Expected an image (H, W[, C]) or a batch (N, H, W[, C]); got '
                   f'shape {array.shape}.')


# ---------------------------------------------------------------------------
# Models from a workdir or official weights.

def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run wrote (config.json), over today's defaults."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        e.errno, f'No config.json in {workdir}: point --workdir at a training run '
        '(it holds config.json and checkpoints/)', path) from e
  merged = _merge(config_lib.base_config().to_dict(), saved)
  return ml_collections.ConfigDict(merged)


def _merge(base: dict, values: dict) -> dict:
  out = dict(base)
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def load_workdir(workdir: str, checkpoint: str | int = 'best'
                 ) -> tuple[nnx.Module, dict[str, Any]]:
  """The model of checkpoint `checkpoint` of a training run, and its settings.

  Returns:
    (model, settings): the model in eval mode; settings are `Predictor`
    arguments: the normalisation and channels it was trained with (the
    checkpoint's, else config.json's), the evaluation's threshold, padding
    and buckets, and a description of the checkpoint.
  """
  from irstd_jax import train  # pylint: disable=g-import-not-at-top  (imports TFDS)
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        2, f'No checkpoints in {workdir}: train first, or point --workdir at a '
        'training run', directory)
  config = read_config(workdir)

  def build():
    model = train.create_model(config)
    return model, optim.create_optimizer(model, config, optax.constant_schedule(0.0))

  # Abstract: a random initialisation would be overwritten anyway.
  model, optimizer = nnx.eval_shape(build)
  replicated = sharding.replicated(sharding.create_mesh())
  weights = nnx.to_pure_dict(nnx.state(model))
  like = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      {'model': weights, 'opt': nnx.to_pure_dict(nnx.state(optimizer)),
       **({'ema': weights} if steps.ema_decay(config) else {})})
  checkpoints = checkpointing.Checkpoints(directory, best_metric=config.eval.best_metric)
  try:
    step = checkpoints.resolve(checkpoint)
    meta = checkpoints.restore_meta(step)
    train._check_compatible(meta, train.model_description(config), workdir)  # pylint: disable=protected-access
    restored, meta = checkpoints.restore(step, like)
  finally:
    checkpoints.close()
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, steps.eval_weights(restored))
  nnx.update(model, state)
  model.eval()
  inp = meta.get('input') or {key: config.input[key] for key in ('mean', 'std', 'num_channels')}
  # Padded as the run's final score was (`:cpu`: per image, its curve in buckets).
  final_max_shapes = config_lib.final_eval_config(config).eval.max_shapes
  settings = dict(
      mean=float(inp['mean']), std=float(inp['std']), num_channels=int(inp['num_channels']),
      threshold=float(config.eval.threshold), pad_multiple=int(config.eval.pad_multiple),
      max_shapes=int(final_max_shapes),
      description={'source': 'workdir', 'workdir': os.path.abspath(workdir),
                   'checkpoint': str(checkpoint), 'step': int(step),
                   'epoch': meta.get('epoch'), 'model': meta.get('model'),
                   'eval_resolution': config.eval.resolution})
  return model, settings


def load_torch(name: str, weights: Any, **options) -> tuple[nnx.Module, dict[str, Any]]:
  """Model `name` with official PyTorch weights, and the official code's input.

  The official codes read images /255; GaNet's takes 1 channel, GGL-Net's 3
  (the grey image repeated). `weights`: a .pth file (needs torch), a .npz of
  the state dict, or a mapping of names to arrays.
  """
  recipe = name if name in recipes.RECIPES else 'ganet'  # unet: GaNet's code.
  spec = recipes.resolve(recipe, None)
  options.setdefault('in_channels', spec.num_channels)
  model = convert.from_torch(name, weights, **options)
  model.eval()
  source = os.path.abspath(weights) if isinstance(weights, (str, os.PathLike)) else 'arrays'
  settings = dict(mean=spec.mean, std=spec.std, num_channels=int(options['in_channels']),
                  description={'source': 'torch', 'weights': source,
                               'model': {'name': name, 'options': options}})
  return model, settings
