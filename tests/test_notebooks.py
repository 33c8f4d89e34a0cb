"""The notebooks: current with their sources, stored without outputs, and each
one runs top to bottom.

Running them is the slow case: each notebook in a fresh kernel (nbclient), at
smoke size (IRSTD_NOTEBOOK_SMOKE=1), the kernel started in a temporary folder
that also holds its workdirs and built datasets, one CPU device. A cell that
raises fails the case with the cell and its traceback.
"""

import importlib.util
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / 'notebooks'
RENDERED = REPO / 'docs' / 'notebooks'

for _module in ('nbformat', 'nbclient', 'ipykernel', 'matplotlib'):
  pytest.importorskip(_module, reason=f'{_module} runs the notebooks: pip install -e ".[dev]"')

import nbformat  # pylint: disable=g-import-not-at-top,wrong-import-position


def _load(name):
  """notebooks/NAME.py as a module (the folder is not a package)."""
  spec = importlib.util.spec_from_file_location(f'notebooks_{name}', NOTEBOOKS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


build = _load('build')
render = _load('render')
COLAB_URL = re.compile(
    r'https://colab\.research\.google\.com/github/([^/\s)]+)/irstd_jax/blob/main/'
    r'notebooks/(\w+)\.ipynb')


def test_the_notebook_list_is_the_same_everywhere():
  assert render.NAMES == build.NAMES
  assert {p.stem for p in NOTEBOOKS.glob('*.ipynb')} == set(build.NAMES)
  assert {p.stem for p in (NOTEBOOKS / 'src').glob('*.py')} == set(build.NAMES)


@pytest.mark.parametrize('name', build.NAMES)
def test_notebook_is_built_from_its_source_and_has_no_outputs(name):
  text = (NOTEBOOKS / f'{name}.ipynb').read_text(encoding='utf-8')
  assert text == build.text(build.build(name)), (
      f'notebooks/{name}.ipynb differs from notebooks/src/{name}.py: run '
      'python notebooks/build.py')
  notebook = nbformat.reads(text, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source[:80]
  # The badge opens this notebook; the setup cell comes next; one parameter cell.
  assert build.colab_url(name) in notebook.cells[0].source
  assert notebook.cells[1].source == build.SETUP
  parameters = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and 'IRSTD_NOTEBOOK_SMOKE' in parameters[0].source


def test_colab_links_share_one_owner_and_open_existing_notebooks():
  for path in (REPO / 'README.md', REPO / 'docs' / 'notebooks.md'):
    links = COLAB_URL.findall(path.read_text(encoding='utf-8'))
    assert {owner for owner, _ in links} == {build.GITHUB_OWNER}, path
    assert {name for _, name in links} == set(build.NAMES), path


def test_rendered_copies_are_there_small_and_name_no_machine_path():
  files = [p for p in RENDERED.rglob('*') if p.is_file()]
  assert {p.stem for p in files if p.suffix == '.md'} == set(build.NAMES)
  for path in files:
    limit = render.MAX_PNG_BYTES if path.suffix == '.png' else 2_000_000
    assert path.stat().st_size <= limit, path
    if path.suffix == '.md':
      text = path.read_text(encoding='utf-8')
      assert str(REPO.parent) not in text, path  # This checkout's location.
      assert not re.search(r'(/tmp/|/root/|/home/)', text), path
      for figure in re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', text):
        assert (RENDERED / figure).is_file(), figure


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


@pytest.mark.parametrize('name', build.NAMES)
def test_notebook_runs_at_smoke_size(name, tmp_path, data_dir):
  notebook, _ = render.execute(name, smoke=True, workdir=str(tmp_path), data_dir=data_dir,
                               timeout=900)
  executed = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in executed)
