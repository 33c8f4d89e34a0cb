"""A sweep's results as the paper's table: mean +- std over seeds, beside the paper.

Read back from the trials' `trial.json` files only, so a report can be made at
any time, by any machine that sees the sweep's workdir.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np

from irstd_jax.sweeps import runner
from irstd_jax.sweeps import spec

# (metric key, column title, scale): the papers' units.
COLUMNS = (('miou', 'mIoU', 100), ('niou', 'nIoU', 100), ('pd', 'Pd', 100),
           ('fa', 'Fa (x1e-6)', 1e6), ('f1', 'F1', 100))
PROTOCOLS = (('final', 'final epoch'), ('best', 'best epoch (chosen on the test split)'))


def collect(sweep: spec.Sweep, workdir: str) -> dict[str, list[dict[str, Any]]]:
  """Row name -> the records of its finished trials, in seed order."""
  out = {}
  for r in sweep.rows:
    records = [runner.read_trial(spec.trial_dir(workdir, r, s)) for s in sweep.seeds]
    out[r.name] = [x for x in records if x is not None and x.get('status') == 'done']
  return out


def summarize(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for one value)."""
  array = np.asarray(values, np.float64)
  if not array.size:
    return float('nan'), float('nan')
  return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else float('nan')


def rows(sweep: spec.Sweep, workdir: str, protocol: str) -> list[dict[str, Any]]:
  """One dict per table row: seeds, each column's (mean, std), params, FLOPs, paper."""
  out = []
  for name, records in collect(sweep, workdir).items():
    entry: dict[str, Any] = {'row': name, 'seeds': [x['seed'] for x in records],
                             'params': records[0]['num_params'] if records else None,
                             'flops': records[0].get('flops') if records else None,
                             'paper': sweep.paper.get(name, {})}
    for key, _, scale in COLUMNS:
      values = [x[protocol]['metrics'][key] * scale for x in records
                if x.get(protocol) and key in x[protocol]['metrics']]
      entry[key] = summarize(values)
    out.append(entry)
  return out


def _cell(mean: float, std: float, digits: int = 2) -> str:
  if np.isnan(mean):
    return '-'
  return f'{mean:.{digits}f}' if np.isnan(std) else f'{mean:.{digits}f} ± {std:.{digits}f}'


def _paper_cell(paper: dict[str, float]) -> str:
  """The paper's numbers with their names ('mIoU 94.82, F1 97.34, ...')."""
  return ', '.join(f'{title.split(" ")[0]} {paper[key]:g}' for key, title, _ in COLUMNS
                   if key in paper)


def markdown(sweep: spec.Sweep, workdir: str) -> str:
  lines = [f'# {sweep.title}', '']
  total = len(sweep.rows) * len(sweep.seeds)
  done = sum(len(v) for v in collect(sweep, workdir).values())
  lines.append(f'{done} of {total} trials finished; seeds {list(sweep.seeds)}; each cell is '
               'the mean ± sample standard deviation over the finished seeds.')
  if sweep.paper_note:
    lines.append(f'Paper: {sweep.paper_note}')
  for protocol, label in PROTOCOLS:
    lines += ['', f'## {label.capitalize()}', '']
    header = (['row', 'seeds'] + [title for _, title, _ in COLUMNS]
              + ['params (M)', 'FLOPs (G)', 'paper'])
    lines.append('| ' + ' | '.join(header) + ' |')
    lines.append('|' + '---|' * len(header))
    for entry in rows(sweep, workdir, protocol):
      cells = [entry['row'], str(len(entry['seeds']))]
      cells += [_cell(*entry[key]) for key, _, _ in COLUMNS]
      cells.append('-' if entry['params'] is None else f'{entry["params"] / 1e6:.3f}')
      cells.append('-' if entry['flops'] is None else f'{entry["flops"] / 1e9:.3f}')
      cells.append(_paper_cell(entry['paper']))
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write(sweep: spec.Sweep, workdir: str) -> list[str]:
  """Writes table.md, table.csv and table.png in `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  md_path = os.path.join(workdir, 'table.md')
  with open(md_path, 'w', encoding='utf-8') as f:
    f.write(markdown(sweep, workdir))
  csv_path = os.path.join(workdir, 'table.csv')
  with open(csv_path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['protocol', 'row', 'seeds']
                    + [f'{k}_{s}' for k, _, _ in COLUMNS for s in ('mean', 'std')]
                    + ['params', 'flops'] + [f'paper_{k}' for k, _, _ in COLUMNS])
    for protocol, _ in PROTOCOLS:
      for entry in rows(sweep, workdir, protocol):
        writer.writerow([protocol, entry['row'], ' '.join(map(str, entry['seeds']))]
                        + [v for k, _, _ in COLUMNS for v in entry[k]]
                        + [entry['params'], entry['flops']]
                        + [entry['paper'].get(k, '') for k, _, _ in COLUMNS])
  png_path = os.path.join(workdir, 'table.png')
  figure(sweep, workdir, png_path)
  return [md_path, csv_path, png_path]


def _roc(workdir: str, r: spec.Row, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
  """The final evaluation's ROC (fpr, tpr) of one trial, if it wrote one."""
  directory = spec.trial_dir(workdir, r, seed)
  names = [n for n in os.listdir(directory) if n.startswith('eval_') and
           n.endswith('_final.json')] if os.path.isdir(directory) else []
  if not names:
    return None
  with open(os.path.join(directory, names[0]), encoding='utf-8') as f:
    roc = json.load(f)['metrics'].get('roc')
  return (np.asarray(roc['fpr'], float), np.asarray(roc['tpr'], float)) if roc else None


def figure(sweep: spec.Sweep, workdir: str, path: str) -> None:
  """Each row's ROC (final epoch, mean over seeds) and mIoU bars with error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (roc_ax, bar_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  for r in sweep.rows:
    curves = [c for c in (_roc(workdir, r, s) for s in sweep.seeds) if c is not None]
    if curves:
      fpr = np.mean([c[0] for c in curves], axis=0)
      tpr = np.mean([c[1] for c in curves], axis=0)
      roc_ax.plot(fpr, tpr, marker='.', label=r.name)
  roc_ax.set(xlabel='false positive rate (pixels)', ylabel='true positive rate (pixels)',
             title='ROC, final epoch (mean over seeds)', xscale='symlog',
             xlim=(0, None), ylim=(0, 1.02))
  roc_ax.set_xscale('symlog', linthresh=1e-5)
  roc_ax.legend(fontsize=8)
  entries = rows(sweep, workdir, 'final')
  x = np.arange(len(entries))
  means = [e['miou'][0] for e in entries]
  stds = [0.0 if np.isnan(e['miou'][1]) else e['miou'][1] for e in entries]
  bar_ax.bar(x, means, yerr=stds, capsize=4, color='#1f77b4', label='ours (final epoch)')
  paper = [e['paper'].get('miou', np.nan) for e in entries]
  if not all(np.isnan(paper)):
    where = sweep.paper_note.split(',')[0]
    bar_ax.scatter(x, paper, color='#d62728', zorder=3, marker='D',
                   label=f'paper ({where})' if where else 'paper')
  bar_ax.set_xticks(x, [e['row'] for e in entries], rotation=20, ha='right', fontsize=8)
  bar_ax.set(ylabel='mIoU (%)', title='mIoU, mean ± std over seeds', ylim=(0, 105))
  bar_ax.legend(fontsize=8, loc='lower right')
  fig.suptitle(sweep.title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
