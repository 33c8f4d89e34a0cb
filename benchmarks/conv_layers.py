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
"""

from __future__ import annotations

import argparse
import json
import pathlib

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
  p.add_argument('--out', help='JSON file for the medians (seconds).')
  return p.parse_args(argv)


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


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  timing.limit_threads(args.threads or None)
  torch = None
  if args.torch:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    torch = torch_reference.import_torch()
    if args.threads:
      torch.set_num_threads(args.threads)
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
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
  return rows


if __name__ == '__main__':
  main()
