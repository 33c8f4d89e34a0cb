"""Builds notebooks/NAME.ipynb from its readable source, notebooks/src/NAME.py.

    python notebooks/build.py            # writes every notebook
    python notebooks/build.py --check    # exit status 1 when a notebook differs from its source

Sources are Python in the "percent" format: `# %%` starts a code cell,
`# %% [markdown]` a markdown cell whose lines are `# ` comments, and
`# %% tags=["parameters"]` tags a code cell. Edit the source, then build; the
notebooks are written without outputs. What every notebook shares is added
here: the "Open in Colab" badge at the top of the first markdown cell and,
right after that cell, the setup cell (in Colab it clones the repository and
installs it; elsewhere it does nothing).

GITHUB_OWNER names the GitHub owner of the repository in one place (a
placeholder until the repository is published); README.md and
docs/notebooks.md use the same URLs, which tests/test_notebooks.py checks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import nbformat

GITHUB_OWNER = 'OWNER'
REPOSITORY = f'https://github.com/{GITHUB_OWNER}/irstd_jax'
HERE = pathlib.Path(__file__).resolve().parent
SOURCES = HERE / 'src'
NAMES = ('quickstart', 'your_own_data', 'official_weights', 'ablation_sweep', 'metrics_explained')
BADGE_IMAGE = 'https://colab.research.google.com/assets/colab-badge.svg'

SETUP = f'''\
# Setup. In Colab: clone the repository and install it, with JAX's CUDA wheels on a
# GPU runtime (a minute or two). Elsewhere this does nothing: run the notebook in a
# checkout where `pip install -e ".[notebooks]"` was run.
import os
import shutil
import subprocess
import sys

if 'google.colab' in sys.modules and not os.path.isfile('pyproject.toml'):
  if not os.path.isdir('irstd_jax'):
    subprocess.run(['git', 'clone', '--depth=1', '{REPOSITORY}'], check=True)
  os.chdir('irstd_jax')
  extras = 'notebooks,cuda12' if shutil.which('nvidia-smi') else 'notebooks'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '-e', f'.[{{extras}}]'],
                 check=True)'''


def colab_url(name: str) -> str:
  return (f'https://colab.research.google.com/github/{GITHUB_OWNER}/irstd_jax/blob/main/'
          f'notebooks/{name}.ipynb')


def badge(name: str) -> str:
  return f'[![Open In Colab]({BADGE_IMAGE})]({colab_url(name)})'


_CELL = re.compile(r'^# %%(?P<kind> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$')


def parse(text: str) -> list[tuple[str, str, list[str]]]:
  """(kind, source, tags) of each cell of a percent-format source."""
  cells, current = [], None
  for line in text.splitlines():
    match = _CELL.match(line)
    if match:
      current = ('markdown' if match['kind'] else 'code',
                 json.loads(match['tags']) if match['tags'] else [], [])
      cells.append(current)
    elif current is None:
      if line.strip():
        raise ValueError(f'text before the first "# %%" line: {line!r}')
    elif current[0] == 'markdown':
      if line and not line.startswith('#'):
        raise ValueError(f'a markdown line must be a "# " comment: {line!r}')
      current[2].append(line[2:] if line.startswith('# ') else line[1:])
    else:
      current[2].append(line)
  return [(kind, '\n'.join(lines).strip('\n'), tags) for kind, tags, lines in cells]


def build(name: str) -> nbformat.NotebookNode:
  """The notebook of notebooks/src/NAME.py, badge and setup cell added."""
  cells = parse((SOURCES / f'{name}.py').read_text(encoding='utf-8'))
  if not cells or cells[0][0] != 'markdown':
    raise ValueError(f'{name}: the first cell must be markdown (the title).')
  notebook = nbformat.v4.new_notebook()
  notebook.metadata = {
      'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
      'language_info': {'name': 'python'},
      'colab': {'provenance': []},
  }
  kind, source, tags = cells[0]
  cells = [(kind, f'{badge(name)}\n\n{source}', tags), ('code', SETUP, [])] + cells[1:]
  for index, (kind, source, tags) in enumerate(cells):
    make = nbformat.v4.new_markdown_cell if kind == 'markdown' else nbformat.v4.new_code_cell
    cell = make(source, id=f'{name}-{index}')
    if tags:
      cell.metadata['tags'] = tags
    notebook.cells.append(cell)
  nbformat.validate(notebook)
  return notebook


def text(notebook: nbformat.NotebookNode) -> str:
  return nbformat.writes(notebook) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('names', nargs='*', default=list(NAMES), help='notebooks to build')
  parser.add_argument('--check', action='store_true',
                      help='only compare; exit status 1 when a notebook is stale')
  args = parser.parse_args(argv)
  stale = []
  for name in args.names:
    path = HERE / f'{name}.ipynb'
    wanted = text(build(name))
    current = path.read_text(encoding='utf-8') if path.exists() else None
    if current == wanted:
      continue
    stale.append(path.name)
    if not args.check:
      path.write_text(wanted, encoding='utf-8')
  if args.check and stale:
    print(f'Stale (run python notebooks/build.py): {", ".join(stale)}', file=sys.stderr)
    return 1
  print(('Rebuilt: ' + ', '.join(stale)) if stale else 'Every notebook is current.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
