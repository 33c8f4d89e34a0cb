"""Config helpers and the shipped configs."""

import pathlib
import types

import numpy as np
import pytest

from irstd_jax import config_lib
from irstd_jax import optim
from irstd_jax.datasets import catalog
from irstd_jax import train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def test_parse_arg_flags_values_and_typos():
  arg = config_lib.parse_arg('quick,epochs=3,dataset=nudt_sirst,lr=1',
                             quick=False, epochs=0, dataset='sirst_v1', lr=0.5)
  assert arg.quick is True and arg.epochs == 3 and arg.dataset == 'nudt_sirst'
  assert arg.lr == 1.0 and isinstance(arg.lr, float)
  assert config_lib.parse_arg(None, quick=False).quick is False
  with pytest.raises(ValueError, match="Unknown config argument 'epoch'"):
    config_lib.parse_arg('epoch=3', epochs=0)


def test_set_epochs_keeps_decays_at_the_same_fractions():
  c = config_lib.base_config()
  config_lib.set_epochs(c, 40)
  assert c.schedule.num_epochs == 40 and c.schedule.decay_epochs == (20, 30)


def test_learning_rate_drops_at_epoch_boundaries():
  c = config_lib.load_config(str(CONFIGS / 'ganet.py'))
  lr = optim.create_learning_rate_fn(c, steps_per_epoch=10)
  assert float(lr(0)) == pytest.approx(5e-4)
  assert float(lr(1999)) == pytest.approx(5e-4)    # Last step of epoch 200.
  assert float(lr(2000)) == pytest.approx(5e-5)    # First step of epoch 201.
  assert float(lr(3000)) == pytest.approx(5e-6)


@pytest.mark.parametrize('name', ['ganet', 'gglnet', 'unet'])
def test_configs_follow_their_papers_and_have_a_quick_variant(name):
  c = config_lib.load_config(str(CONFIGS / f'{name}.py'))
  assert c.dataset.name == 'sirst_v1' and c.input.batch_size == 4
  assert c.model.name == name
  paper = {'ganet': (5e-4, 400, 'batch', 1), 'unet': (5e-4, 400, 'batch', 1),
           'gglnet': (1e-4, 500, 'sample', 3)}[name]
  assert (c.optimizer.learning_rate, c.schedule.num_epochs, c.loss.reduction,
          c.input.num_channels) == paper
  quick = config_lib.load_config(str(CONFIGS / f'{name}.py'), 'quick')
  assert quick.dataset.name == 'irstd_synthetic'
  assert quick.schedule.num_epochs < 20 and quick.input.image_size == 64
  if name == 'ganet':  # GradFormer's scale follows the training size.
    source = types.SimpleNamespace(name=c.dataset.name, mean_std=None)
    assert config_lib.resolve(quick, source).model.options.img_size == 64
    assert config_lib.resolve(c, source).model.options.img_size == 256


def test_gglnet_basicirstd_protocol():
  c = config_lib.load_config(str(CONFIGS / 'gglnet.py'), 'protocol=basicirstd')
  assert c.dataset.options.config == 'basicirstd' and c.input.recipe == 'basicirstd'
  assert c.eval.resolution == 'native'
  with pytest.raises(ValueError, match='protocol'):
    config_lib.load_config(str(CONFIGS / 'gglnet.py'), 'protocol=other')


@pytest.mark.parametrize('name', ['ganet', 'gglnet'])
def test_cpu_recipe_is_basicirstds_protocol_shrunk_and_scores_the_end_per_image(name):
  c = config_lib.load_config(str(CONFIGS / f'{name}.py'), 'cpu')
  assert c.dataset.options.config == 'basicirstd' and c.input.recipe == 'basicirstd'
  assert (c.input.crop_size, c.input.batch_size, c.schedule.name) == (128, 8, 'cosine')
  # GaNet's measured recipe: 40 epochs, 70 % of crops on a target, the last 5
  # epochs on crops of 192, all on a target, the curve's statistics from 64 images.
  ganet = name == 'ganet'
  assert (c.schedule.num_epochs, c.input.positive_crop_probability) == (
      (40, 0.7) if ganet else (60, 0.5))
  assert (c.input.final_size, c.input.final_epochs,
          c.input.final_positive_crop_probability) == ((192, 5, 1.0) if ganet else (0, 0, None))
  assert c.eval.resolution == 'native' and c.eval.max_shapes == 4
  assert c.eval.final_max_shapes == 0  # The reported score: each image padded alone.
  # Crop statistics flood whole images otherwise: every training image, also at the end.
  source = types.SimpleNamespace(name=c.dataset.name, mean_std=(100.0, 30.0))
  assert c.eval.precise_bn_images == (64 if ganet else -1)
  resolved = config_lib.resolve(c, source)
  assert resolved.model.options.get('img_size', 128) == 128  # The first crop size.
  assert resolved.eval.final_precise_bn_images == -1
  # What the last epoch, eval mode and predict --workdir score with.
  with resolved.unlocked():
    resolved.eval.precise_bn_images = 64  # A curve from a subset.
  final = config_lib.final_eval_config(resolved)
  assert (final.eval.max_shapes, final.eval.precise_bn_images) == (0, -1)
  assert (resolved.eval.max_shapes, resolved.eval.precise_bn_images) == (4, 64)  # Untouched.
  with resolved.unlocked():  # A config.json from before the final_ fields.
    del resolved.eval['final_max_shapes'], resolved.eval['final_precise_bn_images']
  assert config_lib.final_eval_config(resolved).eval.max_shapes == 4
  with c.unlocked():
    c.eval.final_precise_bn_images = -1  # As a curve from a subset would set it.
    c.eval.precise_bn_images = 0  # Off: at the end too.
  assert config_lib.resolve(c, source).eval.final_precise_bn_images == 0
  assert config_lib.base_config().eval.precise_bn_images == 0  # The papers' recipes: off.
  with pytest.raises(ValueError, match='cpu is a recipe of its own'):
    config_lib.load_config(str(CONFIGS / f'{name}.py'), 'cpu,protocol=pal')


def test_configs_are_not_an_importable_package():
  assert not (CONFIGS / '__init__.py').exists()


def test_model_dtype_reaches_the_model_and_bad_values_are_refused():
  config = config_lib.base_config()
  config.model.name = 'unet'
  config.model.options = dict(base_channels=4)
  assert train.create_model(config).dtype == 'float32'
  config.model.dtype = 'bfloat16'
  assert train.create_model(config).dtype == 'bfloat16'
  assert 'dtype' not in train.model_description(config)['options']  # Resumable either way.
  config.model.dtype = 'float64'
  with pytest.raises(ValueError, match='config.model.dtype'):
    train.create_model(config)


def test_resolve_fills_every_derived_value_once():
  """Sizes, normalisation, GaNet's img_size and the eval resolution become concrete."""
  sirst = types.SimpleNamespace(name='sirst_v1', mean_std=None)
  ganet = config_lib.resolve(config_lib.load_config(str(CONFIGS / 'ganet.py')), sirst)
  assert (ganet.input.image_size, ganet.input.normalization) == (256, 'unit')
  assert (ganet.input.mean, ganet.input.std) == (0.0, 255.0)
  assert ganet.model.options.img_size == 256
  gglnet_config = config_lib.load_config(str(CONFIGS / 'gglnet.py'))
  gglnet = config_lib.resolve(gglnet_config, sirst)
  assert gglnet.eval.resolution == 512 and gglnet.input.image_size == 512
  assert gglnet_config.eval.resolution == 'train'  # The input config is not modified.
  basic = config_lib.resolve(
      config_lib.load_config(str(CONFIGS / 'ganet.py'), 'protocol=basicirstd'), sirst)
  assert basic.input.normalization == 'sirst_v1' and basic.model.options.img_size == 256
  assert basic.input.std == pytest.approx(34.6196, abs=1e-4)
  own = config_lib.load_config(str(CONFIGS / 'ganet.py'), 'protocol=basicirstd')
  own.dataset.name = 'irstd_folder'  # No published statistics: the dataset's own.
  own = config_lib.resolve(own, types.SimpleNamespace(name='irstd_folder', mean_std=(90.0, 20.0)))
  assert (own.input.mean, own.input.std, own.input.normalization) == (
      90.0, 20.0, 'dataset statistics')
  gglnet_config.input.num_channels = 1
  with pytest.raises(ValueError, match='in_channels=3 differs from input.num_channels=1'):
    config_lib.resolve(gglnet_config, sirst)


@pytest.mark.parametrize('name', ['ganet', 'gglnet', 'unet'])
def test_each_dataset_brings_its_own_splits(name):
  """dataset=NAME trains and tests on splits that dataset has (issue: nudt_sirst had no trainval)."""
  for dataset in catalog.DATASETS.values():
    c = config_lib.load_config(str(CONFIGS / f'{name}.py'), f'dataset={dataset.name},epochs=1')
    train_split, test_split = config_lib.splits(c)
    assert (train_split, test_split) == (dataset.default.train, dataset.default.test)
    if dataset.default.names is not None:
      assert {train_split, test_split} <= set(dataset.default.names)
  nudt = config_lib.load_config(str(CONFIGS / f'{name}.py'), 'dataset=nudt_sirst')
  assert config_lib.splits(nudt) == ('train', 'test')
  basic = config_lib.load_config(str(CONFIGS / f'{name}.py'), 'protocol=basicirstd,dataset=irstd_1k')
  assert 'config' not in basic.dataset.options and config_lib.splits(basic) == ('trainval', 'test')
  with pytest.raises(ValueError, match='quick trains on the offline synthetic data'):
    config_lib.load_config(str(CONFIGS / f'{name}.py'), 'quick,dataset=irstd_folder')


def test_gglnet_pal_protocol_has_pal_values():
  """configs/gglnet.py:protocol=pal against YuChuang1205/PAL train_model.py:
  LEARNING_RATE 1e-3, AdamW (torch's default weight decay 0.01), no scheduler,
  TRAIN_BATCH_SIZE 16, NUM_EPOCHS 400, PATCH_SIZE 256, edgeSCE_loss, RGB input
  normalised by Calculate_mean_std of the training images, test at native size
  padded to 32 with black, best test mIoU kept, evaluated every epoch."""
  c = config_lib.load_config(str(CONFIGS / 'gglnet.py'), 'protocol=pal')
  assert (c.input.recipe, c.input.crop_size, c.input.num_channels,
          c.input.batch_size, c.input.normalization) == ('pal', 256, 3, 16, 'train_split')
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) == (
      'adamw', 1e-3, 0.01)
  assert (c.schedule.name, c.schedule.num_epochs, tuple(c.schedule.decay_epochs)) == (
      'multistep', 400, ())
  assert c.loss.name == 'edge_bce' and c.model.options.in_channels == 3
  assert (c.eval.resolution, c.eval.pad, c.eval.pad_multiple, c.eval.every_epochs,
          c.eval.best_metric, c.eval.threshold) == ('native', 'black', 32, 1, 'miou', 0.5)
  assert c.dataset.options.config == 'basicirstd'  # NUAA 213 / 214, as PAL's table.
  lr = optim.create_learning_rate_fn(c, steps_per_epoch=14)
  assert float(lr(0)) == float(lr(14 * 400 - 1)) == pytest.approx(1e-3)  # Constant.
  # Normalised by the training images themselves: mean of per-image means / stds.
  images = [np.full((4, 6, 1), 10, np.uint8), np.arange(24, dtype=np.uint8).reshape(4, 6, 1)]
  source = _Split([{'image': i} for i in images], 'sirst_v1', (1.0, 2.0))
  resolved = config_lib.resolve(c, source)
  assert resolved.input.mean == pytest.approx((10 + 11.5) / 2)
  assert resolved.input.std == pytest.approx(np.arange(24).std() / 2)
  assert resolved.input.normalization == 'train_split'
  # Other datasets keep their own splits (IRSTD-1k 800 / 201).
  irstd = config_lib.load_config(str(CONFIGS / 'gglnet.py'), 'protocol=pal,dataset=irstd_1k')
  assert 'config' not in irstd.dataset.options and irstd.input.recipe == 'pal'
  with pytest.raises(ValueError, match="'code', 'basicirstd', 'pal'"):
    config_lib.load_config(str(CONFIGS / 'gglnet.py'), 'protocol=other')


class _Split(list):
  """A training split with a name and (ignored by 'train_split') build statistics."""

  def __init__(self, examples, name, mean_std):
    super().__init__(examples)
    self.name, self.mean_std = name, mean_std
