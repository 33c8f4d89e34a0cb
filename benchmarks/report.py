"""Markdown rendering of benchmark results (one table, one row per figure)."""

from __future__ import annotations

import math


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '—'
  if isinstance(value, int):
    return str(value)
  if abs(value) >= 100:
    return f'{value:.0f}'
  if abs(value) >= 10:
    return f'{value:.1f}'
  if abs(value) >= 0.1:
    return f'{value:.2f}'
  return f'{value:.3g}'


def _ratio_cell(figure: dict) -> str:
  ratio = figure.get('ratio')
  if ratio is None:
    return '—'
  faster = ratio > 1 if figure['better'] == 'higher' else ratio < 1
  return f'{ratio:.2f}' + (' (JAX ahead)' if faster else '')


def markdown(results: dict) -> str:
  """The README table: device / case / figure / JAX / PyTorch / JAX ÷ PyTorch."""
  env = results['environment']
  device = f"{env['platform'].upper()} {env['cpu']}" if env['platform'] == 'cpu' \
      else env['device']
  threads = env['threads'].get('cores_allowed')
  lines = [
      f"Device: {device}, {threads} threads per framework; jax {env['jax']}"
      + (f", torch {env['threads']['torch']}" if 'torch' in env['threads'] else '')
      + f"; {env['precision']}; XLA options: {env.get('xla_options') or 'none'}"
      + '; allocator: ' + (f"LD_PRELOAD={env['ld_preload']}." if env.get('ld_preload')
                           else 'the C library malloc (no LD_PRELOAD).'),
      f"Load average (1 min) at start / end: {env['load_average_start'][0]:.2f} / "
      f"{env.get('load_average_end', [float('nan')])[0]:.2f}.",
      '',
  ]
  peak = results['peak']
  lines.append(
      f"Float32 matmul peak ({peak['matmul_size']}²): "
      + ', '.join(f'{k} {v:.1f} GFLOP/s' for k, v in peak['gflop_s'].items()) + '.')
  lines += ['', '| Device | Model | Figure | JAX | PyTorch | JAX / PyTorch |',
            '|---|---|---|---|---|---|']
  short_device = 'CPU' if env['platform'] == 'cpu' else env['device']
  for case in results['cases']:
    label = f"{case['model']} {case['size']}², batch {case['batch']}"
    for name, fig in case['figures'].items():
      lines.append(
          f"| {short_device} | {label} | {name} ({fig['unit']}, {fig['better']} is "
          f"better) | {_fmt(fig['jax'])} | {_fmt(fig['torch'])} | {_ratio_cell(fig)} |")
  m = results.get('metrics_evaluation')
  if m and 'error' not in m:
    lines.append(
        f"| {short_device} | metrics | evaluation throughput, the usual metrics, "
        f"{m['images']} maps of mixed sizes (images/s, higher is better; "
        f"reference: lean NumPy / scikit-image in the PyTorch column) | "
        f"{_fmt(m['images_per_s'])} | {_fmt(m['reference_images_per_s'])} | "
        f"{m['speedup_vs_reference']:.1f}x |")
    lines.append(
        f"| {short_device} | metrics | the same with the variants (shooting rule, "
        f"OPDC, hIoU; reference: lean NumPy / scipy) | "
        f"{_fmt(m['variants_images_per_s'])} | "
        f"{_fmt(m['variants_reference_images_per_s'])} | "
        f"{m['variants_speedup_vs_reference']:.1f}x |")
  notes = []
  if m and 'error' in m:
    notes.append(f"- metrics evaluation not measured: {m['error']}")
  elif m:
    notes.append(
        f"- metrics: first call {m['first_call_s']:.1f} s (with the variants "
        f"{m['first_call_variants_s']:.1f} s) with "
        f"{m['compilations_first_call']} compilations, "
        f"{m['compilations_later_calls']} compilations in later calls; "
        f"{m['megapixels_per_s']:.1f} Mpixel/s.")
  for case in results['cases']:
    comp = case['compilations']
    note = (f"{case['model']} {case['size']}²: {comp['setup']} compilations at "
            f"setup, {comp['timed_loops']} during the timed loops")
    if 'eval_output_max_abs_diff' in case:
      note += (f"; eval outputs of JAX and PyTorch (same weights) differ by at most "
               f"{case['eval_output_max_abs_diff']:.2e}")
    load = case['load_average']
    note += f"; load average {load['start'][0]:.2f} → {load['end'][0]:.2f}."
    notes.append('- ' + note)
  lines += ['', *notes, '', f"Command: `{env['command']}`", '']
  return '\n'.join(lines)


def case_summary(case: dict) -> str:
  """One line per case for the console."""
  f = case['figures']
  parts = [f"{case['model']} {case['size']}x{case['size']} b{case['batch']}:"]
  for key in ('train step throughput', 'single-image inference latency',
              'batched inference throughput'):
    fig = f[key]
    parts.append(f"{key} JAX {_fmt(fig['jax'])} / torch {_fmt(fig['torch'])} {fig['unit']}")
  parts.append(f"train compile {_fmt(f['train step compile (lower + XLA)']['jax'])} s")
  return ' | '.join(parts)
