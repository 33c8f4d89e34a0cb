"""Helpers shared by the config files in `configs/` (which are loaded by path).

Configs are programs in the big_vision style: `get_config(arg)` receives the
text after the colon in `--config=configs/ganet.py:quick,epochs=3` and turns it
into a `ConfigDict`. Durations are written in epochs and converted to steps by
the trainer, because the IRSTD datasets are small and the papers count epochs.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

import ml_collections

from irstd_jax import recipes
from irstd_jax.datasets import catalog


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'quick,epochs=3' into a ConfigDict over `defaults`.

  A bare name sets a boolean flag to True; `key=value` is parsed as a Python
  literal when possible and kept as a string otherwise. Every key must be in
  `defaults`, so a typo fails instead of being silently ignored.

  Args:
    arg: the text after ':' in the --config flag, or None.
    **defaults: the accepted keys and their default values.

  Returns:
    A ConfigDict with one field per key of `defaults`.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r} in {arg!r}; accepted: '
                       f'{sorted(defaults)}.')
    if not has_value:
      result[key] = True
      continue
    try:
      parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      parsed = value.strip()
    if isinstance(defaults[key], float) and isinstance(parsed, int):
      parsed = float(parsed)
    result[key] = parsed
  return result


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """Number of optimizer steps in `epochs` epochs (at least one)."""
  return max(1, int(round(epochs * steps_per_epoch)))


def is_epoch_due(epoch: int, every_epochs: int, num_epochs: int) -> bool:
  """Whether something periodic runs after `epoch` (1-based); always after the last."""
  return epoch == num_epochs or (every_epochs > 0 and epoch % every_epochs == 0)


def base_config() -> ml_collections.ConfigDict:
  """Fields every config has; the model configs override what differs.

  Each field is explained where a user might change it.
  """
  c = ml_collections.ConfigDict()
  c.seed = 42  # The papers' codes seed 42.

  # Data. `source_dir` holds the raw download (None: the dataset's default);
  # `data_dir` the built TFDS records (None: ~/tensorflow_datasets or $TFDS_DATA_DIR).
  c.dataset = ml_collections.ConfigDict(dict(
      # Splits: None takes the dataset's own (datasets.catalog: e.g. trainval /
      # test for SIRST-v1, train / test for NUDT-SIRST).
      name='sirst_v1', train_split=ml_collections.FieldReference(None, field_type=str),
      source_dir=ml_collections.FieldReference(None, field_type=str),
      data_dir=ml_collections.FieldReference(None, field_type=str),
      options={}))
  c.input = ml_collections.ConfigDict(dict(
      recipe='basicirstd',   # 'basicirstd', 'ganet', 'gglnet' or 'pal' (recipes).
      batch_size=4,          # Global batch, split over all devices and hosts.
      crop_size=256,         # basicirstd's and pal's random crops.
      # ganet / gglnet resize side; None: the recipe's default for the dataset.
      image_size=ml_collections.FieldReference(None, field_type=int),
      num_channels=1,
      # The last `final_epochs` epochs crop (or resize) to `final_size`
      # instead, at the same batch size; 0: off. basicirstd's crops there
      # fall around a target with `final_positive_crop_probability` (None:
      # `positive_crop_probability`, as before them).
      final_size=0, final_epochs=0,
      final_positive_crop_probability=ml_collections.FieldReference(None, field_type=float),
      # None: the recipe's (/255 for ganet and gglnet, the dataset's mean/std
      # for basicirstd, the training split's for pal); or 'unit', 'sirst_v1',
      # ... (recipes.normalization), or 'train_split' (measured on it).
      normalization=ml_collections.FieldReference(None, field_type=str),
      # Filled in by `resolve` (grey levels): image = (pixel - mean) / std.
      mean=ml_collections.FieldReference(None, field_type=float),
      std=ml_collections.FieldReference(None, field_type=float),
  ))

  # dtype: the models' compute dtype. 'float32' is the papers' and the parity
  # tests' path; 'bfloat16' (mixed precision: parameters, optimizer state and
  # batch-norm statistics stay float32) is meant for GPUs and TPUs.
  c.model = ml_collections.ConfigDict(dict(name='ganet', options={}, dtype='float32'))
  # name: 'softiou' (the GaNet and GGL-Net codes) or 'edge_bce' (PAL's BCE,
  # x4 on mask boundaries, averaged over the harder half of the pixels).
  # SoftIoU's reduction: 'batch' sums over the whole batch (GaNet code),
  # 'sample' averages the per-image ratio (GGL-Net code).
  c.loss = ml_collections.ConfigDict(dict(name='softiou', reduction='batch', smooth=1.0))

  # ema_decay > 0 keeps an exponential moving average of the weights (batch-
  # norm statistics included), which evaluation, checkpoints' scoring and
  # inference then use; 0 (the papers') evaluates the trained weights.
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=5e-4, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, ema_decay=0.0))
  # 'multistep' (the papers'): the learning rate is multiplied by
  # `decay_factor` at each epoch in `decay_epochs` (PyTorch MultiStepLR).
  # 'cosine': linear warm-up over `warmup_epochs`, then cosine decay to
  # `end_fraction` of the peak (the `:cpu` recipes).
  c.schedule = ml_collections.ConfigDict(dict(
      name='multistep', num_epochs=400, decay_epochs=(200, 300), decay_factor=0.1,
      warmup_epochs=0.0, end_fraction=0.0))

  c.eval = ml_collections.ConfigDict(dict(
      split=ml_collections.FieldReference(None, field_type=str),  # None: the dataset's test split.
      every_epochs=1,          # Evaluate on `split` after every N epochs.
      # 'native' (zero-padded to pad_multiple, scored on the real pixels), an
      # int side (resized), or 'train' (resized to the training size).
      resolution='native',
      pad_multiple=32,
      # What native padding holds: 'zero' after normalising (BasicIRSTD,
      # GaNet) or 'black', grey level 0 before normalising (PAL).
      pad='zero',
      # Native: 0 pads each image alone to pad_multiple, as the reference code
      # (BasicIRSTD, PAL) does; N > 0 pads into at most N bucket shapes, which
      # compiles less but moves GGL-Net's numbers (docs/evaluation.md).
      max_shapes=0,
      # The last epoch's evaluation (the run's `final` score): None as
      # max_shapes; `:cpu` draws its curve in buckets but scores the end per image.
      final_max_shapes=ml_collections.FieldReference(None, field_type=int),
      batch_size=8,
      # Before each evaluation, re-estimate batch-norm statistics over this
      # many training images prepared as the test's (-1: all; 0: off, the
      # papers'): training crops' statistics flood whole test images
      # (`irstd_jax.precise_bn`). The checkpoint saved there keeps them.
      precise_bn_images=0,
      # The last epoch's (and eval mode's): None as precise_bn_images, and 0
      # there turns both off; `:cpu` draws its curve from a spread subset
      # and scores the end with all.
      final_precise_bn_images=ml_collections.FieldReference(None, field_type=int),
      threshold=0.5,           # Probability threshold (strict >).
      pd_fa_relative=False,    # True: GaNet code's Pd/Fa on pred / max(pred).
      # Also the target-level variants (shooting rule, OPDC, hIoU and its error
      # terms; docs/metrics_variants.md): one more labelling per batch.
      variants=True,
      best_metric='miou',      # Chooses the "best epoch" checkpoint.
      num_images=4,            # Input/mask/prediction panels in TensorBoard.
      num_overlays=16,         # PNG overlays written at the end (-1: all).
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_epochs=1,  # Also saved after every evaluation and at the end.
      # Also saved inside an epoch after this many minutes of training, so an
      # interruption loses at most that much (0: only at epoch ends).
      every_minutes=10.0,
      keep=2,          # Latest checkpoints kept, plus the best one.
  ))
  c.log_every_steps = 20
  return c


def set_epochs(c: ml_collections.ConfigDict, num_epochs: int) -> None:
  """Changes the training length, keeping the decays at the same fractions."""
  old = c.schedule.num_epochs
  c.schedule.decay_epochs = tuple(
      max(1, round(e * num_epochs / old)) for e in c.schedule.decay_epochs)
  c.schedule.num_epochs = int(num_epochs)


def make_quick(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config to a few minutes on a CPU with offline synthetic data.

  Optimizer, loss, schedule shape and evaluation protocol stay the model's;
  the data, the image size and the number of epochs shrink, and the learning
  rate is 10x the paper's: a demo of ~200 steps must visibly learn (GaNet
  quick, 160 steps: SoftIoU 0.99 -> 0.64 at 5e-3, 0.96 at 2e-3, 0.993 at the
  paper's 5e-4).
  """
  c.dataset.name = 'irstd_synthetic'
  # One image size: native evaluation then compiles once.
  c.dataset.options = dict(num_train=64, num_test=16, min_size=64, max_size=64)
  c.input.crop_size = 64
  c.input.image_size = 64
  c.optimizer.learning_rate *= 10
  set_epochs(c, 12)
  c.eval.every_epochs = 3
  c.eval.num_overlays = -1
  c.log_every_steps = 4


def use_basicirstd_protocol(c: ml_collections.ConfigDict) -> None:
  """BasicIRSTD's protocol: its split, random 256 crops, native test.

  Its split is the dataset's 'basicirstd' builder config where it has one
  (SIRST-v1's and NUDT-SIRST's 50/50), else the dataset's own (IRSTD-1k).
  """
  known = catalog.find(c.dataset.name)
  if known is not None and 'basicirstd' in known.configs:
    c.dataset.options = dict(config='basicirstd')
  c.input.recipe = 'basicirstd'
  c.input.crop_size = 256
  c.input.positive_crop_probability = 0.5  # Its `pos_prob`.
  c.input.image_size = None
  c.eval.resolution = 'native'


def use_pal_protocol(c: ml_collections.ConfigDict) -> None:
  """PAL's fully supervised protocol (YuChuang1205/PAL, `choose_dataset_type='mask'`).

  The GGL-Net authors' recommended framework (MSDA-Net README). From PAL's
  train_model.py: random 256 crops at native scale with its `SomeOf` list
  (recipe 'pal'), 3 channels normalised by the training images' mean / std,
  AdamW lr 1e-3 (PyTorch's default weight decay 0.01), no schedule, batch
  16, 400 epochs, the edge-weighted BCE on the harder half of the pixels
  (`edgeSCE_loss`); the test split after every epoch at native resolution,
  the raw image padded with black to a multiple of 32, threshold 0.5; the
  reported model is the best test mIoU (test_model.py loads
  `best_mIoU_checkpoint`). Splits: BasicIRSTD's where the dataset has that
  config (the 213 / 214 and 663 / 664 of PAL's tables), else the dataset's
  own (IRSTD-1k 800 / 201, SIRST3 1,676 / 1,079).
  """
  known = catalog.find(c.dataset.name)
  if known is not None and 'basicirstd' in known.configs:
    c.dataset.options = dict(config='basicirstd')
  c.input.recipe = 'pal'
  c.input.crop_size = 256
  c.input.image_size = None
  c.input.num_channels = 3
  c.input.normalization = recipes.TRAIN_SPLIT
  c.input.batch_size = 16
  c.loss.name = 'edge_bce'
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.01
  c.schedule.name = 'multistep'
  c.schedule.num_epochs = 400
  c.schedule.decay_epochs = ()
  c.eval.resolution = 'native'
  c.eval.pad = 'black'
  c.eval.every_epochs = 1
  c.eval.best_metric = 'miou'


PROTOCOLS = ('code', 'basicirstd', 'pal')


def use_cpu_recipe(c: ml_collections.ConfigDict, num_epochs: int,
                   learning_rate: float) -> None:
  """A recipe that learns real data in under an hour on a 2-core CPU.

  BasicIRSTD's protocol (its split, native-resolution test, final epoch) with
  smaller crops and a larger batch than the papers', and a short cosine
  schedule with warm-up instead of their step drops; measured in the README
  ("A real-data result on a CPU"). configs/ganet.py adds what was measured
  for GaNet (crop share, length, the last epochs on larger crops).
  """
  use_basicirstd_protocol(c)
  c.input.crop_size = 128
  c.input.batch_size = 8
  c.optimizer.learning_rate = learning_rate
  c.schedule.name = 'cosine'
  c.schedule.num_epochs = int(num_epochs)
  c.schedule.decay_epochs = ()
  c.schedule.warmup_epochs = 3.0
  c.schedule.end_fraction = 0.01
  c.eval.every_epochs = 10
  # The curve's evaluations in 4 buckets: per-image padding compiles the model
  # for 34 shapes on SIRST-v1, about 2 minutes each time it is not cached;
  # the last epoch is scored per image, the protocol, once.
  c.eval.max_shapes = 4
  c.eval.final_max_shapes = 0
  c.eval.precise_bn_images = -1  # Also at the end (final_precise_bn_images None).
  c.checkpoint.every_epochs = 5


def apply_variants(c: ml_collections.ConfigDict,
                   arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies the shared `:protocol=`, `:quick` and `:epochs=` arguments.

  Every config ends with these, in this order (protocol first, so that quick
  and epochs shrink whichever recipe was chosen). `protocol`: 'code' (the
  config's own), 'basicirstd' (`use_basicirstd_protocol`) or 'pal'
  (`use_pal_protocol`).
  """
  if arg.get('cpu'):
    if arg.protocol not in ('code', 'basicirstd') or arg.quick:
      raise ValueError('cpu is a recipe of its own on BasicIRSTD\'s protocol: '
                       'drop protocol= or quick.')
  elif arg.protocol == 'basicirstd':
    use_basicirstd_protocol(c)
  elif arg.protocol == 'pal':
    use_pal_protocol(c)
  elif arg.protocol != 'code':
    raise ValueError(f'protocol must be one of {PROTOCOLS}, got {arg.protocol!r}.')
  if arg.quick:
    if arg.get('dataset'):
      raise ValueError(
          f'quick trains on the offline synthetic data, so dataset={arg.dataset} '
          'cannot apply: drop one of the two (e.g. dataset=NAME,epochs=3 for a '
          'short run on NAME).')
    make_quick(c)
  if arg.epochs:
    set_epochs(c, arg.epochs)
  return c


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config(arg)` of a config file given by path.

  Config files are not a package (ml_collections loads them by path), so one
  config reuses another through this instead of an import.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  name = 'irstd_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ValueError(f'Cannot load the config file {path}.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def splits(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(training split, evaluation split): the config's, else the dataset's own.

  The dataset's defaults come from `datasets.catalog` for the builder config
  named in `dataset.options.config` (e.g. SIRST-v1's 'basicirstd': train /
  test); unknown datasets default to train / test.
  """
  known = catalog.find(config.dataset.name)
  defaults = (known.splits(config.dataset.get('options', {}).get('config'))
              if known is not None else catalog.Splits('train', 'test'))
  return (config.dataset.train_split or defaults.train,
          config.eval.split or defaults.test)


# The value of a model option that `resolve` replaces by the training size.
TRAIN_SIZE = 'train_size'


def training_size(config: ml_collections.ConfigDict) -> int:
  """The side of the training images: the crop (basicirstd, pal) or the resize."""
  if not recipes.resizes(config.input.recipe):
    return int(config.input.crop_size)
  if config.input.image_size is None:
    raise ValueError('input.image_size is unset: call config_lib.resolve first.')
  return int(config.input.image_size)


def resolve(config: ml_collections.ConfigDict, dataset: Any) -> ml_collections.ConfigDict:
  """The config with every derived value made concrete, from the config and the dataset.

  Called once, before anything is built; everything downstream reads the
  values it fills in, and `config.json` in the workdir records them:
  - `dataset.train_split`, `eval.split`: the dataset's own when None;
  - `input.image_size`: the resize side of the ganet / gglnet recipes (the
    recipe's default for the dataset when None; basicirstd crops and keeps None);
  - `input.normalization`, `input.mean`, `input.std`: the normalisation used;
  - `model.options`: the value 'train_size' replaced by the training size
    (GaNet's `img_size`);
  - `eval.resolution`: 'train' replaced by the training size;
  - `eval.final_max_shapes`: `eval.max_shapes` when None;
  - `eval.final_precise_bn_images`: `eval.precise_bn_images` when None or
    when that is 0 (off everywhere).

  Args:
    config: a config from `configs/` (not modified).
    dataset: a source of the config's dataset (`datasets.load`), for its name
      and statistics.

  Returns:
    A resolved copy.
  """
  c = copy.deepcopy(config)
  inp = c.input
  given = None if inp.mean is None or inp.std is None else (inp.mean, inp.std)
  spec = recipes.resolve(
      inp.recipe, c.dataset.name, image_size=inp.image_size, crop_size=inp.crop_size,
      num_channels=inp.num_channels, normalization=given or inp.normalization,
      resolution=c.eval.resolution, train_source=dataset)
  with c.unlocked():
    c.dataset.train_split, c.eval.split = splits(c)
    if recipes.resizes(inp.recipe):
      inp.image_size = spec.train_size
    if given is None:
      inp.normalization = inp.normalization or _normalization_name(inp.recipe, c.dataset.name)
      inp.mean, inp.std = spec.mean, spec.std
    inp.num_channels = spec.num_channels
    size = training_size(c)
    c.model.options = {k: size if v == TRAIN_SIZE else v
                       for k, v in c.model.get('options', {}).items()}
    channels = c.model.options.get('in_channels')
    if channels is not None and channels != inp.num_channels:
      raise ValueError(
          f'model.options.in_channels={channels} differs from '
          f'input.num_channels={inp.num_channels}: set one of them (the model '
          'takes the input\'s channels when in_channels is not given).')
    if c.eval.resolution != spec.eval_resolution:
      del c.eval['resolution']  # A str field may become an int one.
      c.eval.resolution = spec.eval_resolution
    if c.eval.get('final_max_shapes') is None:
      c.eval.final_max_shapes = c.eval.max_shapes
    if c.eval.get('final_precise_bn_images') is None or not c.eval.get('precise_bn_images'):
      c.eval.final_precise_bn_images = c.eval.get('precise_bn_images', 0)
  return c


def final_eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose `eval` is the final evaluation's.

  The last epoch, eval mode and `predict --workdir` all score this way:
  `eval.max_shapes` and `eval.precise_bn_images` replaced by their `final_`
  fields (`:cpu`: the curve in 4 buckets with precise BN from a subset if
  asked, the end per image with all training images). A config that predates
  a `final_` field (an old `config.json`) keeps the curve's value.
  """
  final = copy.deepcopy(config)
  with final.unlocked():
    for field in ('max_shapes', 'precise_bn_images'):
      value = config.eval.get('final_' + field)
      if value is not None:
        final.eval[field] = int(value)
  return final


def _normalization_name(recipe: str, dataset: str) -> str:
  """What `recipes.resolve` normalises by when the config names nothing."""
  if recipes.resizes(recipe):
    return 'unit'
  if recipe == 'pal':
    return recipes.TRAIN_SPLIT
  known = catalog.find(dataset)
  return known.name if known is not None and known.mean_std is not None else 'dataset statistics'
