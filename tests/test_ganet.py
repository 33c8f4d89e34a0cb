"""GaNet against the official PyTorch code (../shared/fixtures/parity_ganet.npz).

The fixture holds random official weights (DATransNet, dilations (1, 3)), the
official eval- and train-mode probabilities, the SoftIoU loss (summed over the
batch, as GaNet's code), a few gradients and the running statistics after one
train-mode pass, each with its own tolerance. GradFormer is also checked on
other shapes against a numpy transcription of the official operations (NCHW,
explicit shifts, torch's stack-then-view head layout). The fixture comparisons
run on both kernel paths (`layers.use_fast_kernels`). Models are module-scoped
so that each shape compiles once.
"""

import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture
from flax import nnx

from irstd_jax import convert
from irstd_jax import losses
from irstd_jax import models
from irstd_jax.models import ganet
from irstd_jax.models import layers

# Parameters the official forward pass uses (those torch gives a gradient);
# the official module holds 4,827,404 with its unused ones.
OFFICIAL_USED_PARAMS = 4_039_074
OFFICIAL_ALL_PARAMS = 4_827_404


def _nhwc(a):
  return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def _nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def _unused(name: str) -> bool:
  return bool(re.match(r'(encoder5|decoder5|se_block|sp_block)\.|contras\d\.scale$', name))


@nnx.jit
def _forward(model, x):
  return model(x)


@nnx.jit
def _train_step(model, x, targets):
  def loss_fn(model):
    logits = model(x)
    return losses.soft_iou_loss(logits, targets, reduction='batch'), logits
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  return loss, logits, grads


@pytest.fixture(scope='module')
def fixture(shared_dir):
  return load_fixture(shared_dir, 'parity_ganet.npz')


@pytest.fixture(scope='module')
def state_dict(fixture):
  return {k.removeprefix('state_dict/'): v.astype(np.float32)
          for k, v in fixture.items() if k.startswith('state_dict/')}


@pytest.fixture(scope='module')
def eval_model(fixture, state_dict):
  model = convert.from_torch('ganet', state_dict, img_size=int(fixture['img_size']))
  model.eval()
  return model


@pytest.fixture(scope='module', params=[True, False], ids=['fast', 'plain'])
def fast_kernels(request):
  """The kernel path of the fixture comparisons: the CPU kernels, or plain."""
  return request.param


@pytest.fixture(scope='module')
def path_eval_model(eval_model, fast_kernels):
  """`eval_model` on the kernel path under test."""
  model = nnx.clone(eval_model)
  model.fast_kernels = fast_kernels
  return model


@pytest.fixture(scope='module')
def trained(fixture, state_dict, fast_kernels):
  """One train-mode pass: loss, probabilities, torch-named gradients and state."""
  model = convert.from_torch('ganet', state_dict, img_size=int(fixture['img_size']),
                             fast_kernels=fast_kernels)
  model.train()
  loss, logits, grads = _train_step(model, _nhwc(fixture['train_input']),
                                    _nhwc(fixture['train_target']))
  after = convert.to_torch(model)  # running statistics after the pass
  nnx.update(model, grads)  # the gradients, in torch layout through to_torch
  return {'loss': float(loss), 'probs': _nchw(jax.nn.sigmoid(logits)),
          'grads': convert.to_torch(model), 'after': after}


def test_eval_output(fixture, path_eval_model):
  probs = _nchw(jax.nn.sigmoid(_forward(path_eval_model, _nhwc(fixture['eval_input']))))
  assert probs.shape == fixture['eval_output'].shape
  diff = np.abs(probs - fixture['eval_output']).max()
  assert diff <= fixture['tol/eval_output'], diff


def test_train_output_and_loss(fixture, trained):
  diff = np.abs(trained['probs'] - fixture['train_output']).max()
  assert diff <= fixture['tol/train_output'], diff
  assert abs(trained['loss'] - fixture['train_loss']) <= fixture['tol/train_loss']


def test_gradients(fixture, trained):
  names = [k.removeprefix('grad/') for k in fixture if k.startswith('grad/')]
  assert names
  for name in names:
    ref = fixture['grad/' + name]
    ratio = np.abs(trained['grads'][name] - ref).max() / np.abs(ref).max()
    assert ratio <= fixture['tol/grad/' + name], (name, ratio)


def test_running_statistics_after_train(fixture, state_dict, trained):
  checked = 0
  for key in fixture:
    if not key.startswith('after_train/'):
      continue
    name, ref = key.removeprefix('after_train/'), fixture[key]
    if _unused(name):  # never run by the official forward: unchanged
      np.testing.assert_array_equal(ref, state_dict[name])
      continue
    ratio = np.abs(trained['after'][name] - ref).max() / np.abs(ref).max()
    assert ratio <= fixture['tol/after_train'], (name, ratio)
    checked += 1
  assert checked == sum(1 for k in trained['after'] if 'running' in k)


def _abstract(name, **options):
  return nnx.eval_shape(lambda: models.build(name, **options))


def test_parameter_counts(state_dict):
  trainable = {k: v.size for k, v in state_dict.items() if 'running' not in k}
  assert sum(trainable.values()) == OFFICIAL_ALL_PARAMS
  used = {k: n for k, n in trainable.items() if not _unused(k)}
  assert sum(used.values()) == OFFICIAL_USED_PARAMS
  assert models.count_params(_abstract('ganet')) == OFFICIAL_USED_PARAMS
  unet = sum(n for k, n in used.items() if not k.startswith(('contras', 'GFEM.')))
  assert models.count_params(_abstract('unet')) == unet
  # Any number of heads splits the same key / value widths: same count.
  assert models.count_params(_abstract('ganet', dilations=(1,))) == OFFICIAL_USED_PARAMS


def test_batch_composition_non_square_and_padding(eval_model):
  """Eval outputs of an image do not depend on its batch-mates; odd sizes pad."""
  x = jax.random.uniform(jax.random.key(0), (3, 64, 96, 1))
  y = np.asarray(_forward(eval_model, x))
  assert y.shape == (3, 64, 96, 1)
  assert np.isfinite(y).all()
  permuted = np.asarray(_forward(eval_model, x[jnp.array([2, 0, 1])]))
  np.testing.assert_allclose(permuted, y[[2, 0, 1]], atol=1e-5, rtol=0)

  odd = x[:, :50, :70]
  padded = models.apply_padded(lambda z: _forward(eval_model, z), odd)
  assert padded.shape == (3, 50, 70, 1)
  expected = _forward(eval_model, jnp.pad(odd, ((0, 0), (0, 14), (0, 26), (0, 0))))
  np.testing.assert_array_equal(np.asarray(padded), np.asarray(expected)[:, :50, :70])


def test_bad_input_is_explained(eval_model):
  with pytest.raises(ValueError, match=r'NHWC.*x\[None\]'):
    eval_model(np.zeros((64, 64, 1), np.float32))
  with pytest.raises(ValueError, match=r'1 input channel.*got 64.*transpose'):
    eval_model(np.zeros((2, 1, 64, 64), np.float32))
  with pytest.raises(ValueError, match=r'divisible by 32, got 48x64.*apply_padded'):
    eval_model(np.zeros((1, 48, 64, 1), np.float32))


def test_total_stride_is_16_without_gfem():
  """GFEM pools the stride-16 bottleneck once more; the U-Net does not."""
  unet = _abstract('unet')
  out = nnx.eval_shape(lambda m, x: m(x), unet, jax.ShapeDtypeStruct((1, 48, 80, 1), jnp.float32))
  assert out.shape == (1, 48, 80, 1)
  with pytest.raises(ValueError, match='divisible by 16'):
    unet(np.zeros((1, 40, 48, 1), np.float32))


def test_option_validation():
  with pytest.raises(ValueError, match='divisible by the number of dilations'):
    _abstract('ganet', dilations=(1, 3, 5))
  with pytest.raises(ValueError, match='dilations must be positive'):
    _abstract('ganet', dilations=())


# --- GradFormer against a numpy transcription of the official operations ---

# (dy, dx) of the neighbour that the official kernels 1..8 subtract.
_OFFICIAL_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


def _gradformer_reference(x, weights, dilations, area):
  """Official ExpansionContrastModule forward (eval-mode BN), NCHW float64."""
  b, c, h, w = x.shape
  heads = len(dilations)
  keys, queries, values = [], [], []
  for i, d in enumerate(dilations):
    xp = np.pad(x, ((0, 0), (0, 0), (d, d), (d, d)))
    surrounds = np.concatenate(
        [x - xp[:, :, d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w]
         for dy, dx in _OFFICIAL_NEIGHBOURS], axis=1)  # channel k * C + c
    conv = lambda name, inp: np.einsum('oi,bihw->bohw', weights[name][:, :, 0, 0], inp)
    keys.append(conv(f'key_convs.{i}.weight', surrounds))
    queries.append(conv(f'query_convs.{i}.weight', x))
    values.append(conv(f'value_convs.{i}.weight', surrounds))
  # torch.stack(dim=2) then .view(b, heads, -1, h * w): a raw memory reshape.
  keys, queries, values = (np.stack(t, axis=2).reshape(b, heads, -1, h * w)
                           for t in (keys, queries, values))
  normalize = lambda t: t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
  scores = normalize(queries) @ normalize(keys).transpose(0, 1, 3, 2) / math.sqrt(area)
  mean = scores.mean(axis=(2, 3), keepdims=True)
  var = scores.var(axis=(2, 3), keepdims=True)
  scores = (scores - mean) / np.sqrt(var + 1e-5)
  scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
  scores /= scores.sum(axis=-1, keepdims=True)
  out = (scores @ values).reshape(b, c, h, w)
  out = np.einsum('oi,bihw->bohw', weights['out_conv.0.weight'][:, :, 0, 0], out)
  bn = lambda k: weights[f'out_conv.1.{k}'][None, :, None, None]
  out = (out - bn('running_mean')) / np.sqrt(bn('running_var') + 1e-5) * bn('weight') + bn('bias')
  return np.maximum(out, 0)


@pytest.mark.parametrize('dilations,size', [((1, 3), 16), ((2,), 8), ((1, 5), 32)])
def test_gradformer_matches_official_operations(dilations, size):
  """Batch 3, non-square, area from a size that is not the input's."""
  channels, heads = 8, len(dilations)
  hidden = channels // heads
  rng = np.random.default_rng(sum(dilations))
  weights = {'out_conv.0.weight': rng.normal(size=(channels, channels, 1, 1)) / 3,
             'out_conv.1.weight': rng.uniform(0.5, 1.5, channels),
             'out_conv.1.bias': rng.normal(size=channels),
             'out_conv.1.running_mean': rng.normal(size=channels) * 0.1,
             'out_conv.1.running_var': rng.uniform(0.5, 1.5, channels)}
  for i in range(heads):
    weights[f'query_convs.{i}.weight'] = rng.normal(size=(hidden, channels, 1, 1))
    weights[f'key_convs.{i}.weight'] = rng.normal(size=(8 * hidden, 8 * channels, 1, 1))
    weights[f'value_convs.{i}.weight'] = rng.normal(size=(8 * hidden, 8 * channels, 1, 1))
  weights = {k: v.astype(np.float32) for k, v in weights.items()}
  module = nnx.eval_shape(
      lambda: ganet.GradFormer(channels, size, size, dilations, rngs=nnx.Rngs(0)))
  convert.load_state_dict(module, weights)
  module.eval()
  x = rng.uniform(size=(3, channels, 12, 20)).astype(np.float32)

  ours = _nchw(nnx.jit(lambda m, v: m(v))(module, _nhwc(x)))
  expected = _gradformer_reference(
      x.astype(np.float64), {k: v.astype(np.float64) for k, v in weights.items()},
      dilations, area=size * size)
  np.testing.assert_allclose(ours, expected, atol=2e-5 * np.abs(expected).max(), rtol=0)
  # The area matters (through the instance norm's eps): an img_size twice as
  # large changes the output far beyond the tolerance above.
  wrong = _gradformer_reference(
      x.astype(np.float64), {k: v.astype(np.float64) for k, v in weights.items()},
      dilations, area=4 * size * size)
  assert np.abs(wrong - expected).max() > 1e-3 * np.abs(expected).max()


def test_import_pulls_no_torch_or_tensorflow():
  code = ('import sys, irstd_jax, irstd_jax.models.ganet, irstd_jax.convert; '
          'bad = {"torch", "tensorflow"} & set(sys.modules); '
          'assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('difference_op', ['slices', 'conv'])
def test_other_difference_ops_match_fixture(fixture, state_dict, eval_model, difference_op):
  """Shifted slices and the official grouped dilated convolution (issue 2's
  formulation) give the official outputs, and the default folded
  convolution's GradFormer outputs."""
  model = convert.from_torch('ganet', state_dict, img_size=int(fixture['img_size']),
                             difference_op=difference_op)
  model.eval()
  x = _nhwc(fixture['eval_input'])
  probs = _nchw(jax.nn.sigmoid(_forward(model, x)))
  assert np.abs(probs - fixture['eval_output']).max() <= fixture['tol/eval_output']
  assert eval_model.contras2.difference_op == 'folded'
  h = jax.random.normal(jax.random.key(1), (2, 16, 24, model.contras2.channels))
  ours, folded = model.contras2(h), eval_model.contras2(h)
  np.testing.assert_allclose(ours, folded, rtol=0, atol=1e-5 * float(jnp.abs(folded).max()))
  with pytest.raises(ValueError, match='difference_op'):
    models.build('ganet', difference_op='fft')
