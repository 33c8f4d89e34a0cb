"""Runs the notebooks and renders copies with outputs under docs/notebooks/.

    python notebooks/render.py                  # the real sizes (minutes on a CPU)
    python notebooks/render.py --smoke          # IRSTD_NOTEBOOK_SMOKE=1 sizes
    python notebooks/render.py quickstart       # some of them

Each notebook runs top to bottom in a fresh kernel (nbclient), in a
temporary folder, with its workdirs there too, and becomes
docs/notebooks/NAME.md, its figures docs/notebooks/NAME/NN.png. The
.ipynb files stay without outputs. `execute` is what tests/test_notebooks.py
runs.
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DOCS = REPO / 'docs' / 'notebooks'
NAMES = ('quickstart', 'your_own_data', 'official_weights', 'ablation_sweep', 'metrics_explained')
# Rendered figures larger than this fail the render: keep them small.
MAX_PNG_BYTES = 300_000
# Stream outputs longer than this many lines keep their first and last lines.
MAX_STREAM_LINES = 60


def kernel_environment(*, smoke: bool, workdir: str, data_dir: str | None = None
                       ) -> dict[str, str]:
  """The environment a notebook's kernel gets: this checkout first on the path,
  one CPU device (no fake devices from the tests), smoke or real sizes."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [
      p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'xla_force_host_platform_device_count' not in f)
  env['IRSTD_NOTEBOOK_SMOKE'] = '1' if smoke else '0'
  env['IRSTD_NOTEBOOK_WORKDIR'] = str(workdir)
  if data_dir:
    env['IRSTD_DATA_DIR'] = str(data_dir)
  # tqdm's hint that ipywidgets would draw nicer bars (Colab has them).
  env['PYTHONWARNINGS'] = ','.join(
      w for w in (env.get('PYTHONWARNINGS'), 'ignore:IProgress not found') if w)
  return env


def execute(name: str, *, smoke: bool, workdir: str, data_dir: str | None = None,
            timeout: int = 1800) -> tuple[nbformat.NotebookNode, float]:
  """Runs notebooks/NAME.ipynb top to bottom; returns it with outputs, and seconds.

  The kernel starts in `workdir` (nothing is written into the checkout);
  a cell that raises fails the run with nbclient's CellExecutionError.
  """
  notebook = nbformat.read(HERE / f'{name}.ipynb', as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=timeout, kernel_name='python3',
      resources={'metadata': {'path': str(workdir)}})
  started = time.perf_counter()
  client.execute(env=kernel_environment(smoke=smoke, workdir=workdir, data_dir=data_dir))
  return notebook, time.perf_counter() - started


# A tqdm progress bar ('desc:  40%|####      | 4/10 [00:01<00:02, 3.1step/s, ...]'):
# live feedback, left out of a rendered copy (the epoch lines stay).
_PROGRESS_BAR = re.compile(r'[^\r\n|]*\d+%\|[^|\r\n]*\|[^\[\r\n]*\[[^\]\r\n]*\]')


def _console(text: str) -> str:
  """Console output as it ends up on screen, without progress bars: a carriage
  return rewrites its line."""
  text = _PROGRESS_BAR.sub('', text)
  lines = [line.rstrip('\r').split('\r')[-1].rstrip() for line in text.split('\n')]
  lines = [re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', line) for line in lines]
  # What a cleared bar leaves before the next line (stderr and stdout interleave).
  lines = [re.sub(r'^ {20,}', '', line) for line in lines]
  lines = [line for line in lines if line.strip()]
  if len(lines) > MAX_STREAM_LINES:
    half = MAX_STREAM_LINES // 2
    lines = lines[:half] + [f'[... {len(lines) - 2 * half} lines ...]'] + lines[-half:]
  return '\n'.join(lines)


def _outputs(cell) -> list[dict]:
  """The cell's outputs, consecutive stream chunks (stdout and stderr) joined."""
  merged = []
  for output in cell.get('outputs', []):
    if output.output_type == 'stream' and merged and merged[-1]['output_type'] == 'stream':
      merged[-1]['text'] += output.text
    else:
      merged.append(dict(output))
  return merged


def to_markdown(notebook: nbformat.NotebookNode, name: str, folder: pathlib.Path,
                note: str, replacements: dict[str, str] | None = None) -> str:
  """Markdown of an executed notebook; its PNG figures are written to folder/NAME/.

  `replacements` rewrites text in the outputs (this machine's paths into
  placeholders); a path of this machine left in the result is an error.
  """
  figures = folder / name
  shutil.rmtree(figures, ignore_errors=True)
  parts = [f'<!-- Rendered by notebooks/render.py from notebooks/{name}.ipynb: '
           f'do not edit. -->\n\n*{note}*']
  count = 0

  def text_block(text):
    for old, new in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
      text = text.replace(old, new)
    text = _console(text)
    if text:
      parts.append(f'```text\n{text}\n```')

  for cell in notebook.cells:
    if cell.cell_type == 'markdown':
      parts.append(cell.source)
      continue
    parts.append(f'```python\n{cell.source}\n```')
    for output in _outputs(cell):
      kind = output['output_type']
      data = output.get('data', {})
      if kind == 'stream':
        text_block(output['text'])
      elif 'image/png' in data:
        count += 1
        figures.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(data['image/png'])
        if len(png) > MAX_PNG_BYTES:
          raise ValueError(f'{name}: figure {count} is {len(png)} bytes, over '
                           f'{MAX_PNG_BYTES}: make it smaller.')
        (figures / f'{count:02d}.png').write_bytes(png)
        parts.append(f'![figure {count}]({name}/{count:02d}.png)')
      elif 'text/plain' in data:
        text_block(data['text/plain'])
      elif kind == 'error':
        text_block(f"{output['ename']}: {output['evalue']}")
  markdown = '\n\n'.join(parts) + '\n'
  for root in _machine_paths():
    if root in markdown:
      raise ValueError(f'{name}: the rendered copy names {root}; add a replacement.')
  return markdown


def _machine_paths() -> list[str]:
  """Folders of this machine that must not appear in a rendered copy."""
  paths = {str(REPO.parent), tempfile.gettempdir(), os.path.expanduser('~'), sys.prefix}
  return sorted(p for p in paths if len(p) > 1)


def replacements_for(workdir: str, data_dir: str | None) -> dict[str, str]:
  """This machine's paths in outputs, as the placeholders a reader understands."""
  out = {str(workdir): 'WORK', str(REPO): '.', str(REPO.parent / 'shared'): '../shared',
         os.path.expanduser('~'): '~'}
  if data_dir:
    out[str(data_dir)] = '$IRSTD_DATA_DIR'
  for site in {sys.prefix, sys.base_prefix}:
    out[site] = '$PYTHON_PREFIX'
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('names', nargs='*', default=list(NAMES), help='notebooks to render')
  parser.add_argument('--smoke', action='store_true', help='IRSTD_NOTEBOOK_SMOKE=1 sizes')
  parser.add_argument('--data_dir', default=None,
                      help='where datasets are built (default: a fresh folder per notebook)')
  args = parser.parse_args(argv)
  unknown = sorted(set(args.names) - set(NAMES))
  if unknown:
    parser.error(f'unknown notebooks {unknown}; choose from {NAMES}')
  DOCS.mkdir(parents=True, exist_ok=True)
  size = 'smoke size (IRSTD_NOTEBOOK_SMOKE=1)' if args.smoke else 'real size'
  for name in args.names:
    with tempfile.TemporaryDirectory(prefix=f'irstd_{name}_') as workdir:
      data_dir = args.data_dir or os.path.join(workdir, 'tensorflow_datasets')
      notebook, seconds = execute(name, smoke=args.smoke, workdir=workdir, data_dir=data_dir)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    note = (f'Executed at {size} on {os.cpu_count()} CPU core(s) in {seconds:.0f} s '
            f'(load average {load:.1f} at the end); the notebook itself has no outputs.')
    markdown = to_markdown(notebook, name, DOCS, note, replacements_for(workdir, data_dir))
    (DOCS / f'{name}.md').write_text(markdown, encoding='utf-8')
    print(f'{name}: {seconds:.0f} s -> {DOCS.relative_to(REPO) / (name + ".md")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
