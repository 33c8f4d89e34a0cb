"""Keeps the benchmark command working. Nothing here times anything."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_interleaved_alternates_and_counts():
  from benchmarks import timing
  order = []
  calls = {'a': lambda: order.append('a'), 'b': lambda: order.append('b')}
  samples = timing.interleaved(calls, repeats=3, warmup=1)
  assert order == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']
  assert [len(s.seconds) for s in samples.values()] == [3, 3]
  assert all(len(s.cpu_seconds) == 3 for s in samples.values())


def test_count_compilations_counts_only_new_shapes():
  import jax
  import numpy as np
  from benchmarks import jax_side

  @jax.jit
  def double_plus_one(x):
    return x * 2 + 1

  inputs = [np.ones((n,), np.float32) for n in (3, 4, 3, 5, 4)]
  with jax_side.count_compilations() as compiles:
    for x in inputs:
      double_plus_one(x)
  assert compiles == ['jit(double_plus_one)'] * 3


def test_run_command_smoke(tmp_path):
  """The whole command on a tiny U-Net (JAX only: CI has no official code)."""
  out = tmp_path / 'results.json'
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env.pop('XLA_FLAGS', None)  # conftest's fake devices are not wanted here
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--out', str(out), '--models',
       'unet', '--sizes', '32', '--batch', '1', '--quick', '--threads', '0',
       '--skip-metrics'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  (case,) = results['cases']
  assert (case['model'], case['size'], case['batch']) == ('unet', 32, 1)
  figures = case['figures']
  assert figures['train step throughput']['jax'] > 0
  assert figures['single-image inference latency']['jax'] > 0
  assert figures['train step compile (lower + XLA)']['jax'] > 0
  assert case['xla']['train']['flops'] > case['xla']['infer_batch_1']['flops'] > 0
  # One train step and one inference executable, reused by every timed call.
  assert case['compilations'] == {'setup': 2, 'timed_loops': 0}
  assert figures['train step throughput']['torch'] is None
  table = out.with_suffix('.md').read_text()
  assert '| Device | Model | Figure | JAX | PyTorch | JAX / PyTorch |' in table
  assert 'unet 32²' in table


def test_run_rejects_unknown_model(tmp_path):
  from benchmarks import run
  with pytest.raises(SystemExit):
    run.parse_args(['--out', str(tmp_path / 'r.json'), '--models', 'resnet'])


def _fake_checkout(root: pathlib.Path) -> pathlib.Path:
  """A stand-in for an official checkout, shaped like MSDA-Net's."""
  (root / 'model' / 'GGL_Net').mkdir(parents=True)
  # Like the official package __init__, it imports networks that are absent.
  (root / 'model' / '__init__.py').write_text('import model.Missing\n')
  (root / 'model' / 'GGL_Net' / 'model_GGL.py').write_text(textwrap.dedent('''
      import torch
      class GGLNet(torch.nn.Module):
        def __init__(self):
          super().__init__()
          self.conv = torch.nn.Conv2d(3, 1, 1)
          self.k = torch.ones(1).cuda()  # as the official GaNet does
        def forward(self, x):
          return torch.sigmoid(self.conv(x) * self.k)
  '''))
  return root


def test_torch_reference_imports_from_a_checkout(tmp_path):
  pytest.importorskip('torch')
  import numpy as np
  from benchmarks import torch_reference
  root = _fake_checkout(tmp_path / 'msda')
  refs = torch_reference.find_references([str(root)])
  assert refs == {'gglnet': root.resolve()}
  module = torch_reference.build_official('gglnet', refs['gglnet'], 8)
  assert 'model' not in sys.modules  # the checkout's package does not leak
  bench = torch_reference.TorchBench(module, reduction='sample')
  images = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
  masks = (images[..., :1] > 0.9).astype(np.float32)
  assert 0 <= bench.train_call(images, masks)() <= 1
  assert bench.infer_output(images).shape == (2, 8, 8, 1)


def test_torch_reference_rejects_other_directories(tmp_path):
  from benchmarks import torch_reference
  with pytest.raises(ValueError, match='holds none of'):
    torch_reference.find_references([str(tmp_path)])
  with pytest.raises(ValueError, match='no such directory'):
    torch_reference.find_references([str(tmp_path / 'absent')])


def _fake_ganet_checkout(root: pathlib.Path, imports: str) -> pathlib.Path:
  """A checkout layout with model/DATransNet/segmentation.py importing `imports`."""
  (root / 'model' / 'DATransNet').mkdir(parents=True)
  (root / 'model' / '__init__.py').write_text('')
  (root / 'model' / 'DATransNet' / 'segmentation.py').write_text(
      'import torch\n' + textwrap.dedent(imports))
  return root


def test_torch_reference_accepts_a_gradient_transformer_layout(tmp_path):
  """greekinRoma/Gradient-Transformer: GaNet's GradFormer, nothing later."""
  from benchmarks import torch_reference
  root = _fake_ganet_checkout(tmp_path / 'Gradient-Transformer', '''
      from .Gradient_attention.contrast_and_atrous import AttnContrastLayer
      from .CDCNs.Gradient_model import ExpansionContrastModule
      from .AttentionModule import *
  ''')
  assert torch_reference.find_references([str(root)]) == {'ganet': root.resolve()}


@pytest.mark.parametrize('imports', [
    # greekinRoma/DATransNet now: DATrans skips and an InceptionNeXt head (timm).
    '''
    from .Gradient_attention.contrast_and_atrous import AttnContrastLayer
    from .DATrans.DATrans import DATrans
    from .AttentionModule import *
    from .CSPBlocks.InceptionNext import InceptionDWConv2d
    ''',
    # An earlier DATransNet commit: GradFormer plus a TGM / TRM block.
    '''
    from .CDCNs.Gradient_model import ExpansionContrastModule
    from .Non_local.TGMandTRM import TGMandTRM
    ''',
])
def test_torch_reference_names_gradient_transformer_for_datransnet(tmp_path, imports):
  """A DATransNet checkout is refused, naming the repository that has GaNet."""
  from benchmarks import torch_reference
  root = _fake_ganet_checkout(tmp_path / 'DATransNet', imports)
  with pytest.raises(ValueError, match='greekinRoma/Gradient-Transformer') as error:
    torch_reference.find_references([str(root)])
  assert 'not the paper\'s GaNet' in str(error.value)
  # Also where the model is built (benchmarks.conv_layers goes there directly),
  # before torch is needed.
  with pytest.raises(ValueError, match='greekinRoma/Gradient-Transformer'):
    torch_reference.build_official('ganet', root.resolve(), 32)


@pytest.mark.parametrize('with_torch', [False, True])
def test_conv_layers_smoke(tmp_path, with_torch):
  """The per-layer convolution benchmark at a tiny shape."""
  if with_torch:
    pytest.importorskip('torch')
  from benchmarks import conv_layers
  out = tmp_path / 'conv.json'
  argv = ['--layers', '8:2:3', '--batch', '1', '--repeats', '1', '--warmup', '0',
          '--threads', '0', '--out', str(out)] + (['--torch'] if with_torch else [])
  rows = conv_layers.main(argv)
  assert [r['part'] for r in rows] == list(conv_layers.PARTS)
  assert all(r['jax_s'] > 0 for r in rows)
  assert all((r.get('torch_s', 0) > 0) == with_torch for r in rows)
  assert json.loads(out.read_text()) == rows


def test_conv_layers_rejects_malformed_layer():
  from benchmarks import conv_layers
  with pytest.raises(SystemExit):
    conv_layers.parse_args(['--layers', '256x16'])


def test_conv_layers_step_inventories_the_train_step(tmp_path):
  """--step finds and replays every convolution of a compiled train step."""
  from benchmarks import conv_layers
  out = tmp_path / 'step.json'
  result = conv_layers.main(['--step', 'unet:32', '--batch', '1', '--repeats', '1',
                             '--warmup', '0', '--threads', '0', '--out', str(out)])
  rows = result['convolutions']
  kinds = {r['kind'] for r in rows}
  assert kinds == {'weight gradient', 'forward / input gradient'}
  # Every weight gradient's kernel window spans the activations it reduces.
  for r in rows:
    if r['kind'] == 'weight gradient':
      assert r['rhs'][:2] == r['lhs'][1:3]
  assert all(r['count'] >= 1 and r['seconds'] > 0 for r in rows)
  assert result['jax_step_s'] > 0
  assert json.loads(out.read_text())['convolutions'] == [
      dict(r, lhs=list(r['lhs']), rhs=list(r['rhs']), out=list(r['out'])) for r in rows]


def test_conv_layers_step_reads_hlo_convolutions():
  from benchmarks import conv_layers
  hlo = textwrap.dedent('''
      %x = f32[4,16,16,8]{3,2,1,0} parameter(0)
      %k = f32[3,3,8,8]{3,2,1,0} parameter(1)
      %t = f32[8,16,16,4]{3,2,1,0} parameter(2)
      %g = f32[16,16,4,8]{3,2,1,0} parameter(3)
      %c1 = f32[4,16,16,8]{3,2,1,0} convolution(%x, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
      %c2 = f32[4,16,16,8]{3,2,1,0} convolution(%x, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="a"}
      %c3 = f32[8,3,3,8]{3,2,1,0} convolution(%t, %g), window={size=16x16 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
      %c4 = f32[4,16,16,8]{3,2,1,0} convolution(%x, %k), window={size=3x3 pad=1_1x1_1 rhs_reversal=1x1}, dim_labels=b01f_01io->b01f
  ''')
  found, skipped = conv_layers.step_convolutions(hlo)
  assert found == {
      ('f32', (4, 16, 16, 8), (3, 3, 8, 8), (4, 16, 16, 8), 'size=3x3 pad=1_1x1_1', 1): 2,
      ('f32', (8, 16, 16, 4), (16, 16, 4, 8), (8, 3, 3, 8), 'size=16x16 pad=1_1x1_1', 1): 1}
  assert len(skipped) == 1 and 'rhs_reversal' in skipped[0]


def test_conv_layers_profiles_the_official_step(tmp_path):
  pytest.importorskip('torch')
  from benchmarks import conv_layers
  root = _fake_checkout(tmp_path / 'msda')
  profile = conv_layers.profile_torch_step('gglnet', 8, 2, str(root), warmup=1)
  assert profile['step_s'] > 0
  assert 0 < profile['conv_forward_s'] < profile['step_s']
  assert 0 < profile['conv_backward_s'] < profile['step_s']
