"""The converter with GaNet's official state dict: exact round trip, clear errors."""

import logging
import re

import numpy as np
import pytest
from conftest import load_fixture

from irstd_jax import convert

# Official GaNet parameters that its forward pass never uses, written out here
# from the official module (torch reports no gradient for exactly these).
_UNUSED_PREFIXES = ('encoder5.', 'decoder5.', 'se_block.', 'sp_block.')


def _is_unused(name: str) -> bool:
  return name.startswith(_UNUSED_PREFIXES) or re.fullmatch(r'contras\d\.scale', name)


@pytest.fixture(scope='module')
def official(shared_dir):
  data = load_fixture(shared_dir, 'parity_ganet.npz')
  state_dict = {k.removeprefix('state_dict/'): v.astype(np.float32)
                for k, v in data.items() if k.startswith('state_dict/')}
  return state_dict, int(data['img_size'])


@pytest.fixture(scope='module')
def model(official):
  state_dict, img_size = official
  return convert.from_torch('ganet', state_dict, img_size=img_size)


def test_round_trip_is_exact(official, model):
  state_dict, _ = official
  back = convert.to_torch(model)
  used = {k for k in state_dict if not _is_unused(k)}
  assert set(back) == used
  for name in used:
    assert back[name].dtype == np.float32
    np.testing.assert_array_equal(back[name], state_dict[name], err_msg=name)


def test_accepts_float16_and_module_prefix(official):
  """DataParallel checkpoints prefix 'module.'; fixtures are float16."""
  state_dict, img_size = official
  prefixed = {'module.' + k: v.astype(np.float16) for k, v in state_dict.items()}
  back = convert.to_torch(convert.from_torch('ganet', prefixed, img_size=img_size))
  np.testing.assert_array_equal(back['outc.weight'], state_dict['outc.weight'])


def test_unused_parameters_are_reported(official, model, caplog):
  state_dict, _ = official
  with caplog.at_level(logging.INFO):
    skipped = convert.load_state_dict(model, state_dict)
  expected = sorted(k for k in state_dict if _is_unused(k))
  assert sorted(skipped) == expected
  # encoder5: 8 params + 4 stats; decoder5: 10 + 4; se_block 1; sp_block 3;
  # contras1-4.scale.
  assert len(expected) == 12 + 14 + 1 + 3 + 4
  assert 'encoder5.0.conv1.weight' in caplog.text


def test_missing_parameter_raises(official):
  state_dict, img_size = official
  incomplete = {k: v for k, v in state_dict.items() if k != 'contras2.out_conv.1.running_var'}
  with pytest.raises(ValueError, match=r'missing.*contras2\.out_conv\.1\.running_var'):
    convert.from_torch('ganet', incomplete, img_size=img_size)


def test_unknown_parameter_raises(official):
  state_dict, img_size = official
  with pytest.raises(ValueError, match=r'no place in GaNet.*decoder9\.weight'):
    convert.from_torch('ganet', {**state_dict, 'decoder9.weight': np.zeros(3)},
                       img_size=img_size)


def test_options_must_match_weights(official):
  """The U-Net variant has no GradFormer / GFEM, one head has other shapes."""
  state_dict, img_size = official
  with pytest.raises(ValueError, match=r'no place in GaNet.*(contras|GFEM)'):
    convert.from_torch('unet', state_dict)
  with pytest.raises(ValueError, match=r'contras1\..*shape'):
    convert.from_torch('ganet', state_dict, dilations=(1,), img_size=img_size)


def test_unet_round_trip(official):
  state_dict, _ = official
  unet_dict = {k: v for k, v in state_dict.items()
               if not _is_unused(k) and not k.startswith(('contras', 'GFEM.'))}
  back = convert.to_torch(convert.from_torch('unet', unet_dict))
  assert set(back) == set(unet_dict)
  for name, value in unet_dict.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_read_state_dict_reads_npz_without_torch(tmp_path):
  path = tmp_path / 'weights.npz'
  np.savez(path, **{'module.inc.conv1.weight': np.ones((2, 1, 3, 3), np.float16),
                    'inc.bn1.running_var': np.arange(2.0)})
  state_dict = convert.read_state_dict(path)
  assert sorted(state_dict) == ['inc.bn1.running_var', 'inc.conv1.weight']
  assert state_dict['inc.conv1.weight'].shape == (2, 1, 3, 3)
