r"""Benchmarks GaNet and GGL-Net in JAX, side by side with the official PyTorch.

  python -m benchmarks.run --out results.json \
      [--torch-reference PATH/TO/Gradient-Transformer --torch-reference PATH/TO/MSDA-Net] \
      [--models ganet gglnet] [--sizes 256 512] [--batch 4] [--threads 2] [--quick]

For each model and size it measures the jitted train step (forward, SoftIoU,
backward, Adam), single-image latency and batched inference throughput, the
compile times of both, the FLOP/s XLA's cost analysis implies against a large
float32 matmul on the same device, and XLA's buffer sizes. With a reference
checkout and torch installed, the official model runs the same steps on the
same inputs with the same weights and thread count, timed in alternation with
JAX, and every figure gets a JAX / PyTorch ratio. Writes JSON (--out) and a
Markdown table (--markdown, default: next to --out with a .md suffix).

Threads: `--threads N` limits the process to N cores (XLA sizes its thread
pools from the process's CPU affinity) and calls torch.set_num_threads(N).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

from benchmarks import report, timing

# Default cases of issue 6: both models at 256, GGL-Net also at 512.
DEFAULT_SIZES = {'ganet': (256,), 'gglnet': (256, 512), 'unet': (256,)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m benchmarks.run', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', required=True, help='JSON results file.')
  p.add_argument('--markdown', help='Markdown table file (default: OUT.md).')
  p.add_argument('--torch-reference', action='append', default=[], metavar='DIR',
                 help='root of an official checkout (greekinRoma/Gradient-Transformer '
                 'for GaNet, YuChuang1205/MSDA-Net for GGL-Net); repeat for both.')
  p.add_argument('--models', nargs='+', default=['ganet', 'gglnet'])
  p.add_argument('--sizes', nargs='+', type=int,
                 help='image sizes for every model (default: GaNet 256, '
                 'GGL-Net 256 and 512).')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--threads', type=int, default=2,
                 help='cores for both frameworks (0: all).')
  p.add_argument('--train-repeats', type=int, default=10)
  p.add_argument('--infer-repeats', type=int, default=20)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--matmul-size', type=int, default=2048)
  p.add_argument('--precision', choices=['float32', 'bfloat16'], default='float32',
                 help="the JAX models' compute dtype (their dtype option: "
                 'parameters, Adam and batch-norm statistics stay float32).')
  p.add_argument('--xla-defaults', action='store_true',
                 help="JAX with XLA's default options instead of the project's "
                 '(irstd_jax.steps.compiler_options), to measure what they change.')
  p.add_argument('--skip-metrics', action='store_true',
                 help='do not time irstd_jax.metrics.score (nor its NumPy references).')
  p.add_argument('--quick', action='store_true',
                 help='few repeats and a small matmul (a smoke run, not a '
                 'measurement).')
  args = p.parse_args(argv)
  if args.quick:
    args.train_repeats, args.infer_repeats, args.warmup = 2, 2, 1
    args.matmul_size = 256
  for name in args.models:
    if name not in DEFAULT_SIZES:
      p.error(f'--models: unknown model {name!r}; choose from {sorted(DEFAULT_SIZES)}.')
  return args


def _environment(args, threads: dict) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from irstd_jax import steps  # pylint: disable=g-import-not-at-top
  cpu = 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f
                  if line.startswith('model name')), cpu)
  except OSError:
    pass
  env = {
      'device': str(jax.devices()[0].device_kind),
      'platform': jax.default_backend(),
      'cpu': cpu,
      'cpu_count': os.cpu_count(),
      'threads': threads,
      'python': platform.python_version(),
      'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compilation_cache_dir': jax.config.jax_compilation_cache_dir,
      'precision': args.precision,
      'xla_options': ('XLA defaults' if args.xla_defaults else
                      steps.compiler_options(jax.default_backend())),
      'command': ' '.join(['python -m benchmarks.run', *sys.argv[1:]]),
      'load_average_start': timing.load_average(),
      # Preloaded allocator, if any (both frameworks share the process's).
      'ld_preload': os.environ.get('LD_PRELOAD', ''),
  }
  return env


def _ratio(a, b):
  if a is None or b is None or not b:
    return None
  return a / b


def _figure(unit: str, better: str, jax_value, torch_value=None, **extra) -> dict:
  return {'unit': unit, 'better': better, 'jax': jax_value, 'torch': torch_value,
          'ratio': _ratio(jax_value, torch_value), **extra}


def run_case(name: str, size: int, args, reference_dir, peak_flops: float) -> dict:
  """All figures for one model at one size."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_side  # pylint: disable=g-import-not-at-top

  load_start = timing.load_average()
  images, masks = jax_side.example_batch(name, args.batch, size)
  single = images[:1]

  torch_bench, state_dict = None, None
  if reference_dir is not None:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    module = torch_reference.build_official(name, reference_dir, size)
    state_dict = torch_reference.state_dict_numpy(module)
    torch_bench = torch_reference.TorchBench(
        module, reduction=jax_side.LOSS_REDUCTION[name])

  model = jax_side.build_model(name, size, state_dict=state_dict,
                               options={'dtype': args.precision})
  bench = jax_side.JaxBench(model, reduction=jax_side.LOSS_REDUCTION[name],
                            xla_defaults=args.xla_defaults)
  with jax_side.count_compilations() as compiles:
    train_c = bench.compile_train(images, masks)
    infer1_c = bench.compile_infer(single)
    infer_b_c = bench.compile_infer(images)
  num_setup_compiles = len(compiles)

  case: dict[str, Any] = {'model': name, 'size': size, 'batch': args.batch,
                          'torch_reference': str(reference_dir) if reference_dir else None}
  # Same weights, same inputs: the outputs must agree before timings compare.
  if torch_bench is not None:
    diff = np.abs(bench.infer_output(images) - torch_bench.infer_output(images))
    case['eval_output_max_abs_diff'] = float(diff.max())

  def timed(jax_call, torch_call, repeats):
    calls = {'jax': jax_call}
    if torch_bench is not None:
      calls['torch'] = torch_call
    return timing.interleaved(calls, repeats=repeats, warmup=args.warmup)

  with jax_side.count_compilations() as compiles:
    train = timed(bench.train_call(images, masks),
                  torch_bench and torch_bench.train_call(images, masks),
                  args.train_repeats)
    infer1 = timed(bench.infer_call(single),
                   torch_bench and torch_bench.infer_call(single),
                   args.infer_repeats)
    infer_b = timed(bench.infer_call(images),
                    torch_bench and torch_bench.infer_call(images),
                    args.infer_repeats)
  num_loop_compiles = len(compiles)

  def med(samples, key):
    return samples[key].median if key in samples else None

  def cpu_med(samples, key):
    if key not in samples or not samples[key].cpu_seconds:
      return None
    return statistics.median(samples[key].cpu_seconds)

  def per_s(samples, key, count):
    m = med(samples, key)
    return count / m if m else None

  def achieved(samples, key, flops):
    m = med(samples, key)
    return flops / m / 1e9 if m else None

  def of_peak(gflop_s):
    return gflop_s / peak_flops if gflop_s is not None else None

  b = args.batch
  f = {
      'train step throughput': _figure(
          'images/s', 'higher', per_s(train, 'jax', b), per_s(train, 'torch', b)),
      'single-image inference latency': _figure(
          'ms', 'lower', med(infer1, 'jax') * 1e3,
          med(infer1, 'torch') and med(infer1, 'torch') * 1e3),
      'batched inference throughput': _figure(
          'images/s', 'higher', per_s(infer_b, 'jax', b), per_s(infer_b, 'torch', b)),
      'train step CPU time per step (all threads)': _figure(
          's', 'lower', cpu_med(train, 'jax'), cpu_med(train, 'torch')),
      'train step compile (lower + XLA)': _figure(
          's', 'lower', train_c.lower_s + train_c.compile_s),
      'train step compile, CPU time': _figure('s', 'lower', train_c.cpu_s),
      'inference compile, batch 1': _figure(
          's', 'lower', infer1_c.lower_s + infer1_c.compile_s),
      'train step achieved FLOP/s': _figure(
          'GFLOP/s', 'higher', achieved(train, 'jax', train_c.flops),
          achieved(train, 'torch', train_c.flops),
          note='XLA cost-analysis FLOPs of the step over each median time'),
      'train step FLOP/s / matmul peak': _figure(
          'fraction', 'higher', of_peak(achieved(train, 'jax', train_c.flops)),
          of_peak(achieved(train, 'torch', train_c.flops))),
      f'inference FLOP/s / matmul peak, batch {b}': _figure(
          'fraction', 'higher', of_peak(achieved(infer_b, 'jax', infer_b_c.flops)),
          of_peak(achieved(infer_b, 'torch', infer_b_c.flops))),
      'train step XLA buffers (args + out - donated + temp)': _figure(
          'MiB', 'lower', train_c.memory.get('peak_estimate_bytes', float('nan')) / 2**20),
      f'inference XLA buffers, batch {b}': _figure(
          'MiB', 'lower', infer_b_c.memory.get('peak_estimate_bytes', float('nan')) / 2**20),
  }
  if b != 1:
    f[f'inference compile, batch {b}'] = _figure(
        's', 'lower', infer_b_c.lower_s + infer_b_c.compile_s)
  device_peak = jax_side.device_peak_bytes()
  if device_peak is not None:
    f['device peak memory (backend counter)'] = _figure('MiB', 'lower', device_peak / 2**20)
  case['figures'] = f
  case['timings'] = {
      'train': {k: v.to_json() for k, v in train.items()},
      'infer_batch_1': {k: v.to_json() for k, v in infer1.items()},
      f'infer_batch_{b}': {k: v.to_json() for k, v in infer_b.items()},
  }
  case['xla'] = {'train': train_c.to_json(), 'infer_batch_1': infer1_c.to_json(),
                 f'infer_batch_{b}': infer_b_c.to_json()}
  case['compilations'] = {'setup': num_setup_compiles, 'timed_loops': num_loop_compiles}
  case['load_average'] = {'start': load_start, 'end': timing.load_average()}
  return case


def measure_peak(args, with_torch: bool) -> dict:
  from benchmarks import jax_side  # pylint: disable=g-import-not-at-top
  n = args.matmul_size
  calls = {'jax': jax_side.peak_matmul(n)}
  if with_torch:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    calls['torch'] = torch_reference.peak_matmul(n)
  samples = timing.interleaved(calls, repeats=5 if args.quick else 20, warmup=2)
  flops = 2.0 * n ** 3
  gflops = {k: flops / v.median / 1e9 for k, v in samples.items()}
  return {'matmul_size': n, 'gflop_s': gflops,
          'peak_gflop_s': max(gflops.values()),
          'timings': {k: v.to_json() for k, v in samples.items()}}


def measure_metrics(args) -> dict:
  """Throughput of `irstd_jax.metrics.score` on a synthetic mixed-size set.

  The owner's own, finer benchmark is benchmarks/metrics_benchmark.py; this
  figure is the end-to-end call a user makes after inference: all metrics
  (IoU, nIoU, P/R/F1, Pd/Fa, ROC, the Pd-Fa curve) of a set of probability
  maps, with and without the target-level variants (shooting rule, OPDC,
  hIoU), against the lean NumPy / scikit-image / scipy references of
  metrics_benchmark.py, timed in alternation.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_side  # pylint: disable=g-import-not-at-top
  from benchmarks import metrics_benchmark  # pylint: disable=g-import-not-at-top
  try:
    from irstd_jax import metrics  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {'error': f'irstd_jax.metrics unavailable: {e}'}
  rng = np.random.default_rng(0)
  count = 8 if args.quick else 64
  sizes = [(256, 256), (240, 320), (512, 512), (221, 317)]
  preds, masks = [], []
  for i in range(count):
    h, w = sizes[i % len(sizes)]
    mask = np.zeros((h, w), np.float32)
    for _ in range(3):  # a few small targets
      y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
      mask[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = 1
    pred = np.clip(0.8 * mask + 0.3 * rng.random((h, w)), 0, 1).astype(np.float32)
    preds.append(pred)
    masks.append(mask)
  pixels = sum(p.size for p in preds)
  curve = metrics.PD_FA_THRESHOLDS
  calls = {
      'jax': lambda: metrics.score(preds, masks, variants=False),
      'jax_variants': lambda: metrics.score(preds, masks),
      'numpy': lambda: metrics_benchmark.lean(preds, masks, curve),
      'numpy_variants': lambda: (metrics_benchmark.lean(preds, masks, curve),
                                 metrics_benchmark.lean_variants(preds, masks, curve)),
  }
  try:
    with jax_side.count_compilations() as compiles:
      first = timing.time_call(calls['jax'])[0]
      first_variants = timing.time_call(calls['jax_variants'])[0]
      first_compiles = len(compiles)
      samples = timing.interleaved(calls, repeats=2 if args.quick else 5, warmup=0)
  except Exception as e:  # pylint: disable=broad-except
    return {'error': f'{type(e).__name__}: {e}'}
  jax_s, variants_s = samples['jax'].median, samples['jax_variants'].median
  return {'images': count, 'sizes': sizes, 'megapixels': pixels / 1e6,
          'first_call_s': first, 'first_call_variants_s': first_variants,
          'compilations_first_call': first_compiles,
          'compilations_later_calls': len(compiles) - first_compiles,
          'images_per_s': count / jax_s,
          'megapixels_per_s': pixels / 1e6 / jax_s,
          'reference_images_per_s': count / samples['numpy'].median,
          'speedup_vs_reference': samples['numpy'].median / jax_s,
          'variants_images_per_s': count / variants_s,
          'variants_reference_images_per_s': count / samples['numpy_variants'].median,
          'variants_speedup_vs_reference': samples['numpy_variants'].median / variants_s,
          'timings': {k: v.to_json() for k, v in samples.items()}}


def main(argv=None) -> dict:
  args = parse_args(argv)
  threads = timing.limit_threads(args.threads or None)
  references = {}
  if args.torch_reference:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    references = torch_reference.find_references(args.torch_reference)
    torch = torch_reference.import_torch()
    if args.threads:
      torch.set_num_threads(args.threads)
    threads['torch_threads'] = torch.get_num_threads()
    threads['torch'] = torch.__version__

  results = {'environment': _environment(args, threads)}
  results['peak'] = measure_peak(args, with_torch=bool(references))
  peak_flops = results['peak']['peak_gflop_s']
  results['cases'] = []
  for name in args.models:
    for size in (args.sizes or DEFAULT_SIZES[name]):
      start = time.perf_counter()
      case = run_case(name, size, args, references.get(name), peak_flops)
      case['wall_s'] = time.perf_counter() - start
      results['cases'].append(case)
      print(report.case_summary(case), flush=True)
  if not args.skip_metrics:
    results['metrics_evaluation'] = measure_metrics(args)
  results['environment']['load_average_end'] = timing.load_average()

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2))
  md_path = pathlib.Path(args.markdown) if args.markdown else out.with_suffix('.md')
  md_path.write_text(report.markdown(results))
  print(f'Wrote {out} and {md_path}.')
  return results


if __name__ == '__main__':
  main()
