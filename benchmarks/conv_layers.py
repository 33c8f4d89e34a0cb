r"""Times single 3x3 convolutions in XLA and PyTorch: the per-layer view.

  python -m benchmarks.conv_layers [--torch] [--threads 2] [--batch 4] \
      [--layers 256:16:16 128:32:32 ...] [--out conv_layers.json]

The train-step figures of `benchmarks.run` say how far apart the frameworks
are; this says where. For each layer shape (size:in:out, stride 1, padding 1,
NHWC in JAX, NCHW in torch) it times the forward convolution, the input
gradient and the weight gradient separately, each as its own jitted function
with the train step's XLA options (`irstd_jax.steps.compiler_options`). The
weight gradient is timed from NHWC activations, so XLA's layout transposes
are included, as in a train step. With `--torch` (torch installed) the same
three are timed with torch's convolution and `convolution_backward`, in
alternation with JAX. The default layers are GGL-Net's 3x3 convolutions at
256x256 input (one per resolution level). Prints a Markdown table.

  python -m benchmarks.conv_layers --step gglnet:256 [--batch 4] \
      [--torch-reference PATH/TO/MSDA-Net]

instead takes every convolution XLA left in the model's compiled train step
(forward, SoftIoU, backward, Adam, as `benchmarks.run` times it), after its
layout passes, and times each distinct one alone: how much of the step is
convolution, and how much of that weight gradients (convolutions whose
kernel window is larger than their output, i.e. spans the activations).
With an official checkout, one official train step is profiled with
torch.profiler for its convolutions' share.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import time

from benchmarks import timing

DEFAULT_LAYERS = ('256:16:16', '128:32:32', '64:64:64', '32:128:128', '16:256:256')
PARTS = ('forward', 'input gradient', 'weight gradient')


def parse_layer(text: str) -> tuple[int, int, int]:
  try:
    size, cin, cout = (int(v) for v in text.split(':'))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'layer {text!r}: expected SIZE:IN:OUT, e.g. 256:16:16') from None
  if min(size, cin, cout) < 1:
    raise argparse.ArgumentTypeError(f'layer {text!r}: every number must be >= 1')
  return size, cin, cout


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m benchmarks.conv_layers', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--layers', nargs='+', type=parse_layer,
                 default=[parse_layer(t) for t in DEFAULT_LAYERS], metavar='SIZE:IN:OUT')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--threads', type=int, default=2, help='cores for both frameworks (0: all).')
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--torch', action='store_true', help='also time torch (must be installed).')
  p.add_argument('--step', type=parse_step, metavar='MODEL:SIZE',
                 help="time the convolutions of a model's compiled train step "
                 '(e.g. gglnet:256) instead of --layers.')
  p.add_argument('--torch-reference', metavar='DIR',
                 help='with --step: an official checkout; its train step is '
                 "profiled with torch.profiler for the same split.")
  p.add_argument('--out', help='JSON file for the medians (seconds).')
  return p.parse_args(argv)


def parse_step(text: str) -> tuple[str, int]:
  model, _, size = text.partition(':')
  if not size.isdigit() or not model:
    raise argparse.ArgumentTypeError(
        f'--step {text!r}: expected MODEL:SIZE, e.g. gglnet:256')
  return model, int(size)


def jax_calls(batch: int, size: int, cin: int, cout: int) -> dict:
  """Blocking calls running XLA's forward, input- and weight-gradient convolution."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from irstd_jax import steps  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((batch, size, size, cin), np.float32))
  w = jax.device_put(rng.standard_normal((3, 3, cin, cout), np.float32))
  dy = jax.device_put(rng.standard_normal((batch, size, size, cout), np.float32))

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def input_grad(x, w, dy):
    return jax.vjp(lambda a: conv(a, w), x)[1](dy)[0]

  def weight_grad(x, w, dy):
    return jax.vjp(lambda b: conv(x, b), w)[1](dy)[0]

  options = steps.compiler_options(jax.default_backend())
  compiled = [jax.jit(f, compiler_options=options).lower(*args).compile()
              for f, args in ((conv, (x, w)), (input_grad, (x, w, dy)),
                              (weight_grad, (x, w, dy)))]
  arguments = ((x, w), (x, w, dy), (x, w, dy))
  return {part: (lambda c=c, a=a: jax.block_until_ready(c(*a)))
          for part, c, a in zip(PARTS, compiled, arguments)}


def torch_calls(torch, batch: int, size: int, cin: int, cout: int) -> dict:
  """The same three with torch's CPU convolution (oneDNN), without autograd."""
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, cin, size, size, generator=gen)
  w = torch.randn(cout, cin, 3, 3, generator=gen)
  dy = torch.randn(batch, cout, size, size, generator=gen)

  def backward(mask):
    return torch.ops.aten.convolution_backward(
        dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

  def no_grad(fn):
    def call():
      with torch.no_grad():
        return fn()
    return call

  return {'forward': no_grad(lambda: torch.nn.functional.conv2d(x, w, padding=1)),
          'input gradient': no_grad(lambda: backward([True, False, False])),
          'weight gradient': no_grad(lambda: backward([False, True, False]))}


def markdown(rows: list[dict], with_torch: bool) -> str:
  head = '| Layer (batch, size², in -> out) | Part | XLA (ms) |'
  rule = '|---|---|---|'
  if with_torch:
    head += ' PyTorch (ms) | XLA / PyTorch |'
    rule += '---|---|'
  lines = [head, rule]
  for row in rows:
    line = f"| {row['layer']} | {row['part']} | {row['jax_s'] * 1e3:.2f} |"
    if with_torch:
      line += f" {row['torch_s'] * 1e3:.2f} | {row['jax_s'] / row['torch_s']:.2f} |"
    lines.append(line)
  return '\n'.join(lines) + '\n'


_SHAPE = r'(f32|f64|bf16|f16)\[([0-9,]*)\]'
_CONV = re.compile(
    _SHAPE + r'\{[0-9,]*\} convolution\(%([\w.\-]+), %([\w.\-]+)\), '
    r'window=\{([^}]*)\}, dim_labels=([\w>\-]+)(.*)')


def step_convolutions(hlo_text: str) -> tuple[collections.Counter, list[str]]:
  """The convolutions of an optimised HLO module, counted by configuration.

  Returns (Counter of (dtype, lhs, rhs, out, window, groups) -> count, the
  lines of those it cannot replay: other than XLA:CPU's canonical NHWC / HWIO
  layout, or with window reversal).
  """
  shapes = {m.group(1): m.group(3) for m in re.finditer(
      r'%([\w.\-]+) = ' + _SHAPE, hlo_text)}
  dims = lambda text: tuple(int(v) for v in text.split(',') if v)
  found, skipped = collections.Counter(), []
  for line in hlo_text.splitlines():
    m = _CONV.search(line)
    if not m:
      continue
    dtype, out, lhs, rhs, window, labels, rest = m.groups()
    groups = re.search(r'feature_group_count=(\d+)', rest)
    if (labels != 'b01f_01io->b01f' or 'reversal' in window
        or 'batch_group_count' in rest or lhs not in shapes or rhs not in shapes):
      skipped.append(line.strip()[:200])
      continue
    found[(dtype, dims(shapes[lhs]), dims(shapes[rhs]), dims(out), window,
           int(groups.group(1)) if groups else 1)] += 1
  return found, skipped


_DTYPES = {'f32': 'float32', 'f64': 'float64', 'bf16': 'bfloat16', 'f16': 'float16'}


def _window(text: str) -> dict:
  """XLA's window attribute (size=3x3 pad=1_1x1_1 stride=... lhs_dilate=...)."""
  fields = dict(kv.split('=') for kv in text.split())
  pair = lambda key: tuple(int(v) for v in fields.get(key, '1x1').split('x'))
  pad = [(0, 0), (0, 0)]
  if 'pad' in fields:
    pad = [tuple(int(v) for v in p.split('_')) for p in fields['pad'].split('x')]
  return {'window_strides': pair('stride'), 'padding': pad,
          'lhs_dilation': pair('lhs_dilate'), 'rhs_dilation': pair('rhs_dilate')}


def time_step_convolutions(model: str, size: int, batch: int, repeats: int,
                           warmup: int) -> tuple[list[dict], float]:
  """Each distinct convolution of `model`'s train step, jitted and timed alone.

  Returns the rows and the median seconds of the whole step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_side  # pylint: disable=g-import-not-at-top
  from irstd_jax import steps  # pylint: disable=g-import-not-at-top

  bench = jax_side.JaxBench(jax_side.build_model(model, size),
                            reduction=jax_side.LOSS_REDUCTION[model])
  images, masks = jax_side.example_batch(model, batch, size)
  found, skipped = step_convolutions(bench.compile_train(images, masks).fn.as_text())
  step = timing.interleaved({'step': bench.train_call(images, masks)},
                            repeats=max(3, repeats // 2), warmup=warmup)['step'].median
  if skipped:
    print(f'{len(skipped)} convolution(s) not replayed (layout or window '
          f'reversal), e.g.: {skipped[0]}', flush=True)
  options = steps.compiler_options(jax.default_backend())
  rows = []
  for (dtype, lhs, rhs, out, window, groups), count in found.items():
    conv = jax.jit(lambda x, w, window=window, groups=groups: jax.lax.conv_general_dilated(
        x, w, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
        **_window(window)), compiler_options=options)
    dtype = _DTYPES[dtype]
    x, w = jnp.ones(lhs, dtype), jnp.ones(rhs, dtype)
    call = lambda conv=conv, x=x, w=w: jax.block_until_ready(conv(x, w))
    seconds = timing.interleaved({'conv': call}, repeats=repeats, warmup=warmup)['conv'].median
    kind = 'weight gradient' if rhs[0] * rhs[1] > out[1] * out[2] else 'forward / input gradient'
    rows.append({'kind': kind, 'count': count, 'lhs': lhs, 'rhs': rhs, 'out': out,
                 'window': window, 'groups': groups, 'seconds': seconds})
  rows.sort(key=lambda r: -r['count'] * r['seconds'])
  return rows, step


def profile_torch_step(model: str, size: int, batch: int, root: str,
                       warmup: int) -> dict[str, float]:
  """Seconds of one official train step, and of its convolutions, per torch.profiler."""
  from benchmarks import jax_side, torch_reference  # pylint: disable=g-import-not-at-top
  torch = torch_reference.import_torch()
  from torch import profiler  # pylint: disable=g-import-not-at-top
  module = torch_reference.build_official(model, pathlib.Path(root), size)
  call = torch_reference.TorchBench(module, reduction=jax_side.LOSS_REDUCTION[model]
                                    ).train_call(*jax_side.example_batch(model, batch, size))
  for _ in range(max(warmup, 1)):
    call()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
  self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
  backward = sum(v for k, v in self_us.items() if k == 'aten::convolution_backward')
  forward = sum(v for k, v in self_us.items()
                if 'convolution' in k and 'backward' not in k)
  return {'step_s': seconds, 'conv_forward_s': forward / 1e6,
          'conv_backward_s': backward / 1e6}


def step_markdown(rows: list[dict]) -> str:
  lines = ['| Kind | Count | Input | Kernel | Output | Window | ms each | ms total |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['kind']} | {r['count']} | {r['lhs']} | {r['rhs']} | {r['out']} "
                 f"| {r['window']} | {r['seconds'] * 1e3:.2f} "
                 f"| {r['count'] * r['seconds'] * 1e3:.1f} |")
  totals = collections.defaultdict(float)
  for r in rows:
    totals[r['kind']] += r['count'] * r['seconds']
  summary = ', '.join(f'{kind} {t:.3f} s' for kind, t in sorted(totals.items()))
  count = sum(r['count'] for r in rows)
  return ('\n'.join(lines) + f'\n\n{count} convolutions, {sum(totals.values()):.3f} s '
          f'in all: {summary}.\n')


def _step_report(args) -> dict:
  rows, step = time_step_convolutions(*args.step, args.batch, args.repeats, args.warmup)
  print(step_markdown(rows))
  print(f'JAX train step: {step:.3f} s (median).')
  result = {'jax_step_s': step, 'convolutions': rows}
  if args.torch_reference:
    result['torch'] = t = profile_torch_step(*args.step, args.batch, args.torch_reference,
                                             args.warmup)
    print(f"Official train step, profiled: {t['step_s']:.3f} s, convolutions "
          f"{t['conv_forward_s'] + t['conv_backward_s']:.3f} s (forward "
          f"{t['conv_forward_s']:.3f} s, backward {t['conv_backward_s']:.3f} s).")
  return result


def _layers_report(args, torch) -> list[dict]:
  rows = []
  for size, cin, cout in args.layers:
    calls = {('jax', part): fn for part, fn in jax_calls(args.batch, size, cin, cout).items()}
    if torch is not None:
      calls.update({('torch', part): fn for part, fn in
                    torch_calls(torch, args.batch, size, cin, cout).items()})
    samples = timing.interleaved(calls, repeats=args.repeats, warmup=args.warmup)
    for part in PARTS:
      row = {'layer': f'{args.batch}, {size}², {cin} -> {cout}', 'part': part,
             'jax_s': samples['jax', part].median}
      if torch is not None:
        row['torch_s'] = samples['torch', part].median
      rows.append(row)
    print(f'timed {rows[-1]["layer"]}', flush=True)
  print(markdown(rows, torch is not None))
  return rows


def main(argv=None) -> list[dict] | dict:
  """Runs the layers (a list of rows) or, with --step, the step report (a dict)."""
  args = parse_args(argv)
  timing.limit_threads(args.threads or None)
  torch = None
  if (args.torch_reference if args.step else args.torch):
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    torch = torch_reference.import_torch()
    if args.threads:
      torch.set_num_threads(args.threads)
  result = _step_report(args) if args.step else _layers_report(args, torch)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  main()
