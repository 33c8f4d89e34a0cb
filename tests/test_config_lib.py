"""Config helpers and the shipped configs."""

import pathlib
import types

import pytest

from irstd_jax import config_lib
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
  lr = train.create_learning_rate_fn(c, steps_per_epoch=10)
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
